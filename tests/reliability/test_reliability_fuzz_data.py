"""Property-based: random rows through every task reader and the dataset registry. Rows in = rows kept + rows
rejected, and nothing raises (a file as a whole may only be refused with a DataError)."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasktune.config.task import TaskConfig
from tasktune.data.registry import load_registry
from tasktune.data.report import RejectReport
from tasktune.data.sources import read_rows
from tasktune.tasks import task_rows

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
# Text with the characters that trip readers: line and paragraph separators, NEL, CR, BOM, CJK, tabs, quotes.
_text = st.text(alphabet=st.sampled_from(list("ab Z9,\"'{}[]:\t\r\u2028\u2029\x85\x0c\ufeff\u00e9\u4e2d\u6587")) |
                st.characters(blacklist_categories=("Cs",)), max_size=16)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=False), _text)
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=6)
_label = st.sampled_from(["PER", "LOC", "pos", "neg", "O", "B-PER", "I-PER", 0, 1, 7, ""]) | _json
_entity = st.fixed_dictionaries({}, optional={"type": _label, "label": _label, "start": st.integers(-2, 30) | _json,
                                              "end": st.integers(-2, 30) | _json, "text": _text | _json})
_span = st.fixed_dictionaries({"text": _text, "answer_start": st.integers(-1, 20)})
_answers = st.one_of(_text, _json, st.lists(_span, max_size=2),
                     st.fixed_dictionaries({"text": st.lists(_text, max_size=2),
                                            "answer_start": st.lists(st.integers(-1, 20), max_size=2) | _json}))
ROWS = {
    "ner": st.fixed_dictionaries({}, optional={
        "text": _text | _json, "entities": st.lists(_entity, max_size=3) | _json, "tokens": st.lists(_text) | _json,
        "tags": st.lists(_label, max_size=4) | _json,
        "label": st.dictionaries(_text, st.dictionaries(_text, st.lists(st.lists(st.integers(-1, 20)))), max_size=2)
        | _json}),
    "classify": st.fixed_dictionaries({}, optional={"text": _text | _json, "label": _label, "label_text": _json,
                                                    "sentence": _text}),
    "qa": st.fixed_dictionaries({}, optional={"id": _json, "context": _text | _json, "question": _text | _json,
                                              "answers": _answers, "title": _json}),
    "mt": st.fixed_dictionaries({}, optional={"source": _text | _json, "reference": _text | _json,
                                              "references": st.lists(_text, max_size=2) | _json,
                                              "src_lang": st.sampled_from(["en", "zh", "xx", ""]) | _json,
                                              "tgt_lang": st.sampled_from(["en", "de", "ja", ""]) | _json}),
}
SPECS = {"ner": TaskConfig(name="ner", labels=["PER", "LOC"]), "classify": TaskConfig(name="classify",
         labels=["pos", "neg"]), "qa": TaskConfig(name="qa"), "mt": TaskConfig(name="mt", source_lang="en",
                                                                                target_lang="de")}


def _line(row) -> str:
    return row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)


def _lines(task: str):
    """JSON lines, each a row object, some other JSON value, or text that is not JSON (no "\\n" inside)."""
    raw = st.text(max_size=20).map(lambda t: t.replace("\n", " "))
    return st.lists(st.one_of(ROWS[task], _json, raw), max_size=8)


def _counted(lines: list[str]) -> int:
    """Lines the readers must account for: a line that is blank after stripping is no row."""
    return sum(1 for line in lines if line.strip())


_FOLDERS = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(scratch: Path, text: str, suffix: str, bom: bool) -> Path:
    folder = scratch / str(next(_FOLDERS))
    folder.mkdir()
    path = folder / f"rows{suffix}"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _check(task: str, path: Path, expected: int) -> None:
    report = RejectReport()
    kept = task_rows(SPECS[task], path, report)
    assert len(kept) + len(report) == expected, (len(kept), report.counts(), expected)


@SETTINGS
@given(task=st.sampled_from(sorted(ROWS)), data=st.data(), bom=st.booleans())
def test_every_jsonl_row_of_every_task_is_kept_or_rejected(scratch, task, data, bom):
    lines = [_line(row) for row in data.draw(_lines(task))]
    _check(task, _write(scratch, "".join(line + "\n" for line in lines), ".jsonl", bom), _counted(lines))


@SETTINGS
@given(rows=st.lists(ROWS["classify"], max_size=6), bom=st.booleans())
def test_every_csv_row_of_classify_is_kept_or_rejected(scratch, rows, bom):
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # "\r\n" line ends: cells holding "\r" or "\n" are quoted
    writer.writerow(["text", "label"])
    cells = [[_line(r.get("text", "")), _line(r.get("label", ""))] for r in rows]
    writer.writerows(cells)
    _check("classify", _write(scratch, buffer.getvalue(), ".csv", bom), len(cells))  # one record per row written


_paragraph = st.fixed_dictionaries({"context": _text | _json, "qas": st.one_of(_json, st.lists(ROWS["qa"] | _json,
                                                                                              max_size=3))})
_article = st.fixed_dictionaries({"title": _json, "paragraphs": st.one_of(_json, st.lists(_paragraph | _json,
                                                                                          max_size=3))})


@SETTINGS
@given(articles=st.lists(_article | _json, max_size=3))
def test_every_entry_of_a_nested_squad_file_is_kept_or_rejected(scratch, articles):
    expected = 0
    for article in articles:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            expected += 1
            continue
        for paragraph in paragraphs:
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            expected += len(qas) if isinstance(qas, list) and isinstance(paragraph, dict) else 1
    _check("qa", _write(scratch, json.dumps({"data": articles}, ensure_ascii=False), ".json", False), expected)


@SETTINGS
@given(lines=st.lists(st.one_of(st.fixed_dictionaries({}, optional={"instruction": _text | _json, "input": _json,
                                                                      "output": _text | _json}), _json), max_size=8),
       bom=st.booleans())
def test_every_training_row_is_read_or_rejected(scratch, lines, bom):
    text_lines = [_line(row) for row in lines]
    path = _write(scratch, "".join(line + "\n" for line in text_lines), ".jsonl", bom)
    report = RejectReport()
    kept = list(read_rows(path, report))
    assert len(kept) + len(report) == _counted(text_lines)


_entry_value = st.one_of(_json, st.sampled_from(["a.json", "alpaca", "sharegpt", "openai", "train"]))
_entry = st.one_of(_json, st.dictionaries(st.sampled_from(
    ["file_name", "formatting", "columns", "tags", "split", "num_samples", "ranking", "hf_hub_url", "subset",
     "file_nmae", "colums", "whatever"]), _entry_value | st.dictionaries(
        st.sampled_from(["prompt", "query", "response", "messages", "promt", "role_tag", "images"]), _entry_value),
    max_size=5))


@SETTINGS
@given(entries=st.dictionaries(_text, _entry, max_size=5))
def test_every_registry_entry_loads_and_says_whether_it_can_be_used(scratch, entries):
    folder = _write(scratch, json.dumps(entries, ensure_ascii=False), ".json", False).parent
    (folder / "rows.json").rename(folder / "dataset_info.json")
    (folder / "a.json").write_text("[]")
    registry = load_registry(folder)
    assert set(registry) == set(entries)
    for spec in registry.values():
        problem = spec.problem()
        assert problem is None or isinstance(problem, str)

"""Bad data files: a clear error naming the file, or every row counted (kept or rejected with its file:line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.registry import load_registry, resolve_dataset
from tasktune.data.report import DataError, RejectReport
from tasktune.data.sources import read_rows
from tasktune.data.text import data_encoding
from tasktune.tasks import task_rows

CLASSIFY = TaskConfig(name="classify", labels=["pos", "neg"])
# A review whose text holds U+2028, U+0085 and U+2029 inside JSON strings: one object per "\n"-terminated line.
TRICKY = ["line\u2028sep", "next\x85line", "para\u2029sep", "form\x0cfeed", "plain"]


def _jsonl(path: Path, rows: list, prefix: str = "") -> Path:
    path.write_text(prefix + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_non_utf8_task_file_names_the_byte_offset_and_hints(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_bytes('{"text": "caf\u00e9", "label": "pos"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"reviews.jsonl: not UTF-8: byte 0xe9 at byte offset 13 .*data.encoding"):
        task_rows(CLASSIFY, path, RejectReport())
    with data_encoding("latin-1"):  # data.encoding=latin-1 decodes it
        rows = task_rows(CLASSIFY, path, RejectReport())
    assert rows[0].text == "caf\u00e9"


def test_non_utf8_training_file_is_refused_through_the_cli_in_one_line(tmp_path, capsys, tiny_llama_dir):
    from tasktune.cli import main

    path = tmp_path / "train.jsonl"
    path.write_bytes('{"instruction": "Say \u00e9", "output": "\u00e9"}\n'.encode("cp1252"))
    code = main(["train", f"model.name_or_path={tiny_llama_dir}", f"data.datasets={path}",
                 f"output.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 1 and "not UTF-8" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with data_encoding("cp1252"):
        assert [row["output"] for row, _ in read_rows(path, RejectReport())] == ["\u00e9"]


def test_unknown_data_encoding_is_a_config_error():
    from tasktune.config.schema import DataConfig

    with pytest.raises(ConfigError, match="data.encoding"):
        DataConfig(encoding="utf-9").check()


@pytest.mark.parametrize("entry, message", [
    ({"file_name": "a.json", "columns": "instruction"}, "field 'columns' must be an object, got str"),
    ({"file_name": 42}, "field 'file_name' must be a string, got int"),
    ({"file_name": "a.json", "formatting": ["alpaca"]}, "field 'formatting' must be a string, got list"),
    ({"file_nmae": "a.json"}, "unknown field 'file_nmae' (did you mean 'file_name'?)"),
    ({"file_name": "a.json", "columns": {"promt": "q"}}, "unknown columns key 'promt' (did you mean 'prompt'?)"),
    ("a.json", "is str, expected an object"),
])
def test_dataset_info_entries_are_checked_field_by_field(tmp_path, entry, message):
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"bad": entry, "good": {"file_name": "a.json"}}))
    assert set(load_registry(tmp_path)) == {"bad", "good"}  # every entry loads; the bad one fails when selected
    with pytest.raises(DataError) as info:
        resolve_dataset("bad", tmp_path)
    assert message in str(info.value)
    assert resolve_dataset("good", tmp_path).path == tmp_path / "a.json"


def test_output_dir_naming_a_file_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    from tasktune.cli import main

    target = tmp_path / "not-a-dir"
    target.write_text("x")
    assert main(["train", f"output.dir={target}", f"data.datasets={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="is an existing file"):
        main(["--debug", "train", f"output.dir={target}", f"data.datasets={tmp_path}"])


def test_unicode_line_separators_inside_json_strings_stay_in_their_row(tmp_path):
    rows = [{"text": t, "label": "pos"} for t in TRICKY]
    path = _jsonl(tmp_path / "reviews.jsonl", rows)
    report = RejectReport()
    kept = task_rows(CLASSIFY, path, report)
    assert [r.text for r in kept] == TRICKY and len(report) == 0
    assert [r.source.rsplit(":", 1)[1] for r in kept] == ["1", "2", "3", "4", "5"]
    alpaca = _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": t, "output": "x"} for t in TRICKY])
    read = list(read_rows(alpaca, report))
    assert [row["instruction"] for row, _ in read] == TRICKY and read[-1][1].endswith(":5") and len(report) == 0


def test_a_utf8_bom_costs_no_row(tmp_path):
    jsonl = _jsonl(tmp_path / "a.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}],
                   prefix="\ufeff")
    csv = tmp_path / "a.csv"
    csv.write_text("\ufefftext,label\ngood,pos\nbad,neg\n", encoding="utf-8")
    for path in (jsonl, csv):
        report = RejectReport()
        assert [r.label for r in task_rows(CLASSIFY, path, report)] == ["pos", "neg"] and len(report) == 0


def test_a_file_whose_rows_are_all_invalid_shows_the_row_report(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": \n[1, 2]\n')
    with pytest.raises(DataError) as info:
        resolve_dataset(str(path), tmp_path)
    message = str(info.value)
    assert "every row was rejected" in message and "invalid_json: 1" in message and "wrong_type: 1" in message
    assert "broken.jsonl:1" in message


def test_malformed_entries_of_a_nested_squad_file_are_counted(tmp_path):
    good = {"id": "q1", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]}
    document = {"data": [
        {"title": "t", "paragraphs": [{"context": "Ada wrote.", "qas": [good, "not a question", 7]},
                                      {"context": "no qas"}, "not a paragraph"]},
        "not an article",
        {"title": "no paragraphs"},
    ]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document, indent=1))
    report = RejectReport()
    kept = task_rows(TaskConfig(name="qa"), path, report)
    assert len(kept) == 1 and len(report) == 6
    assert report.counts() == {"malformed_entry": 6}


def _eval_cfg(tmp_path, rows: list, *extra):
    from tasktune.config.load import load_config

    path = _jsonl(tmp_path / "dev.jsonl", rows)
    return load_config(None, ["task.name=classify", "task.labels=pos,neg", f"task.eval_file={path}",
                              f"output.dir={tmp_path / 'run'}", *extra])


def test_eval_writes_rejected_rows_and_counts_them(tmp_path, tiny_llama_dir):
    from tasktune.config.schema import ModelConfig
    from tasktune.evaluate.runner import evaluate_task
    from tasktune.model.load import load_model, load_tokenizer

    rows = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(9)] + [{"text": "x"}]
    cfg = _eval_cfg(tmp_path, rows, "eval.max_new_tokens=2")
    model_cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    out = tmp_path / "eval"
    metrics = evaluate_task(cfg, load_model(model_cfg), load_tokenizer(model_cfg, "left"), out_dir=out, progress=False)
    assert metrics["n"] == 9
    assert metrics["rejected"] == 1 and sum(metrics["rejected_by_reason"].values()) == 1
    assert json.loads((out / "metrics.json").read_text())["rejected"] == 1
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 1


def test_eval_stops_above_the_rejection_limit(tmp_path):
    from tasktune.evaluate.runner import load_eval_rows

    rows = [{"text": "ok", "label": "pos"}] + [{"text": f"no label {i}"} for i in range(2)]
    cfg = _eval_cfg(tmp_path, rows)
    with pytest.raises(DataError, match=r"2 of 3 rows rejected .*max_rejected_share"):
        load_eval_rows(cfg, rejected_path=tmp_path / "rejected.jsonl")
    assert len((tmp_path / "rejected.jsonl").read_text().splitlines()) == 2

"""Span-exact NER scores equal seqeval (default mode and strict IOB2) on every CoNLL-2003 dev sentence and
every CLUENER dev sentence (character-level Chinese), with predictions that hold the hard rows: repeated
mentions, the wrong type on one of two identical mentions, boundary errors, dropped and spurious entities.

The same predictions are scored as a head gives them (with spans) and as each generative format writes them
(inline and tagged-words place spans exactly; json places mention texts left to right on the input).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from conftest import SHARED_DATA, needs_shared

from tasktune.config.task import TaskConfig
from tasktune.data.messages import RowError
from tasktune.tasks import bio, ner
from tasktune.tasks import ner_formats as formats

CONLL = SHARED_DATA / "ner" / "conll2003" / "dev.jsonl"
CLUENER = SHARED_DATA / "ner" / "cluener2020" / "dev.jsonl"
CONLL_TYPES = ["LOC", "MISC", "ORG", "PER"]


def load(path, spec):
    items = list(ner.read(path, spec))
    assert not [i for i in items if isinstance(i, RowError)]
    return items


@pytest.fixture(scope="module")
def conll():
    return load(CONLL, TaskConfig(name="ner", labels=CONLL_TYPES))


@pytest.fixture(scope="module")
def cluener():
    rows = load(CLUENER, TaskConfig(name="ner", language="zh"))
    return rows, sorted({e.type for r in rows for e in r.entities})


def units_of(row: ner.NerRow, chars: bool) -> list[tuple[int, int]]:
    """Character spans of the row's tokens (CoNLL) or of its characters (CLUENER)."""
    if chars:
        return [(i, i + 1) for i in range(len(row.text))]
    spans, position = [], 0
    for token in row.tokens:
        spans.append((position, position + len(token)))
        position += len(token) + 1
    return spans


def gold_units(row: ner.NerRow, units) -> list[bio.Span]:
    start_at = {s: i for i, (s, _) in enumerate(units)}
    end_at = {e: i + 1 for i, (_, e) in enumerate(units)}
    return [(e.type, start_at[e.start], end_at[e.end]) for e in row.entities]


def perturb(row: ner.NerRow, units, types: list[str], rng: random.Random) -> tuple[list[bio.Span], bool]:
    """Unit spans of a prediction, and whether it relabels one of two identical mentions."""
    gold = gold_units(row, units)
    texts = Counter(row.text[units[a][0] : units[b - 1][1]] for _, a, b in gold)
    taken = [False] * len(units)
    for _, a, b in gold:
        taken[a:b] = [True] * (b - a)
    spans, relabelled_twin = [], False
    for kind, a, b in gold:
        text = row.text[units[a][0] : units[b - 1][1]]
        roll = rng.random()
        if texts[text] > 1 and not relabelled_twin and roll < 0.6:  # one of two identical mentions
            kind, relabelled_twin = rng.choice([t for t in types if t != kind]), True
        elif roll < 0.12:
            continue
        elif roll < 0.24:
            kind = rng.choice([t for t in types if t != kind])
        elif roll < 0.30 and b < len(units) and not taken[b]:
            b += 1  # boundary error: one unit too many
        elif roll < 0.36 and b - a > 1:
            a += 1  # boundary error: one unit too few
        spans.append((kind, a, b))
    free = [i for i, t in enumerate(taken) if not t and row.text[units[i][0]].isalpha()]
    if free and rng.random() < 0.3:
        i = rng.choice(free)
        if all(not (a <= i < b) for _, a, b in spans):
            spans.append((rng.choice(types), i, i + 1))
    return sorted(spans, key=lambda s: s[1]), relabelled_twin


def as_entities(row, units, spans) -> list[ner.Entity]:
    return [ner.Entity(k, row.text[units[a][0] : units[b - 1][1]], units[a][0], units[b - 1][1]) for k, a, b in spans]


def tags_of(row, units, entities) -> list[str]:
    """IOB2 tags per unit of entities given by character spans."""
    start_at = {s: i for i, (s, _) in enumerate(units)}
    end_at = {e: i + 1 for i, (_, e) in enumerate(units)}
    return bio.encode([(e.type, start_at[e.start], end_at[e.end]) for e in entities], len(units))


def assert_equals_seqeval(ours: dict, y_true: list[list[str]], y_pred: list[list[str]], types: list[str]):
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    for options in ({}, {"mode": "strict", "scheme": IOB2}):
        assert ours["precision"] == pytest.approx(precision_score(y_true, y_pred, **options), abs=1e-9)
        assert ours["recall"] == pytest.approx(recall_score(y_true, y_pred, **options), abs=1e-9)
        assert ours["f1"] == pytest.approx(f1_score(y_true, y_pred, **options), abs=1e-9)
        report = classification_report(y_true, y_pred, output_dict=True, digits=10, zero_division=0, **options)
        for kind in types:
            mine, theirs = ours["strict"]["per_type"][kind], report[kind]
            assert (mine["precision"], mine["recall"], mine["f1"]) == pytest.approx(
                (theirs["precision"], theirs["recall"], theirs["f1-score"]), abs=1e-9)
            assert mine["support"] == theirs["support"]
        assert ours["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-9)


def ambiguous(row: ner.NerRow, entities: list[ner.Entity]) -> bool:
    """Whether a text-only answer cannot say where its mentions are: a predicted text also stands, on word
    edges, somewhere the prediction does not name."""
    named = {(e.start, e.end) for e in entities}
    for e in entities:
        for span in formats.occurrences(e.text, row.text):
            edges = formats.cuts_word(row.text, span[0]) or formats.cuts_word(row.text, span[1])
            if span not in named and not edges:
                return True
    return False


def check(rows, types: list[str], chars: bool, true_tags=None):
    rng = random.Random(0)
    predictions, twin, hard = [], [], 0
    y_true, y_pred = [], []
    for row in rows:
        units = units_of(row, chars)
        spans, relabelled = perturb(row, units, types, rng)
        twin.append(relabelled)
        entities = as_entities(row, units, spans)
        hard += len({e.text for e in entities}) < len(entities)
        predictions.append(entities)
        y_true.append(true_tags(row) if true_tags else tags_of(row, units, row.entities))
        y_pred.append(tags_of(row, units, entities))
    assert sum(twin) > 20 and hard > 50  # the rows where text matching and span matching differ are in
    spec = TaskConfig(name="ner", labels=types)

    # a head: predictions carry their spans
    head = [[{"type": e.type, "text": e.text, "start": e.start, "end": e.end} for e in p] for p in predictions]
    ours = ner.score(head, rows, spec)
    assert ours["strict"]["micro"]["tp"] > 1000 and 0.6 < ours["f1"] < 0.95  # a real, imperfect prediction
    assert_equals_seqeval(ours, y_true, y_pred, types)

    # generative formats that place spans exactly: parsed back to the same spans, same scores
    for fmt in ("inline", "tagged-words"):
        fmt_spec = TaskConfig(name="ner", labels=types, ner_output_format=fmt)
        parsed = [ner.parse(ner.target(r.text, p, fmt_spec), r, fmt_spec)
                  for r, p in zip(rows, predictions, strict=True)]
        assert [[(x["type"], x["start"], x["end"]) for x in p] for p in parsed] == [
            [(e.type, e.start, e.end) for e in p] for p in predictions], fmt
        assert ner.score(parsed, rows, fmt_spec) == ours

    # json: mention texts placed left to right; exact (and equal to seqeval) wherever the texts say where they
    # are, which includes repeated mentions named in order; elsewhere each lands on an occurrence of its text
    parsed = [ner.parse(ner.target(r.text, p, spec), r, spec) for r, p in zip(rows, predictions, strict=True)]
    placed = [[ner.Entity(x["type"], x["text"], x["start"], x["end"]) for x in p] for p in parsed]
    clear = [i for i, (r, p) in enumerate(zip(rows, predictions, strict=True)) if not ambiguous(r, p)]
    assert len(clear) > 0.8 * len(rows) and sum(twin[i] for i in clear) > 20
    assert all(placed[i] == predictions[i] for i in clear)
    assert all(r.text[e.start : e.end] == e.text for r, p in zip(rows, placed, strict=True) for e in p)
    ours_json = ner.score([parsed[i] for i in clear], [rows[i] for i in clear], spec)
    assert_equals_seqeval(ours_json, [y_true[i] for i in clear], [y_pred[i] for i in clear], types)


@needs_shared("ner/conll2003")
def test_conll_dev_scores_equal_seqeval_on_spans(conll):
    check(conll, CONLL_TYPES, chars=False, true_tags=lambda row: row.tags)


@needs_shared("ner/cluener2020")
def test_cluener_dev_scores_equal_seqeval_on_characters(cluener):
    rows, types = cluener
    check(rows, types, chars=True)


@needs_shared("ner/conll2003")
def test_conll_column_file_reads_back_to_the_jsonl_rows(conll, tmp_path):
    """Writing the dev rows as a 4-column CoNLL file and reading it gives the same text and entities."""
    sample = conll[:300]
    path = tmp_path / "dev.conll"
    lines = ["-DOCSTART- -X- -X- O", ""]
    for row in sample:
        lines += [f"{token} X X {tag}" for token, tag in zip(row.tokens, row.tags, strict=True)] + [""]
    path.write_text("\n".join(lines))
    again = list(ner.read(path, TaskConfig(name="ner", labels=CONLL_TYPES)))
    assert [r.text for r in again] == [r.text for r in sample]
    assert [r.entities for r in again] == [r.entities for r in sample]

"""Strict NER scores equal seqeval (default mode, IOB2) on real CoNLL-2003 dev sentences."""

from __future__ import annotations

import random

import pytest
from conftest import SHARED_DATA, needs_shared

from tasktune.config.task import TaskConfig
from tasktune.data.messages import RowError
from tasktune.tasks import bio, ner

pytestmark = needs_shared("ner/conll2003")
DEV = SHARED_DATA / "ner" / "conll2003" / "dev.jsonl"
TYPES = ["LOC", "MISC", "ORG", "PER"]
SPEC = TaskConfig(name="ner", labels=TYPES)


@pytest.fixture(scope="module")
def rows():
    items = list(ner.read(DEV, SPEC))
    assert not [i for i in items if isinstance(i, RowError)]
    return items


def perturb(row: ner.NerRow, rng: random.Random) -> list[bio.Span]:
    """Token spans of a prediction: reference entities, some dropped or relabelled, plus a spurious one."""
    spans = []
    for kind, start, end in bio.decode(row.tags):
        roll = rng.random()
        if roll < 0.2:
            continue
        spans.append((rng.choice([t for t in TYPES if t != kind]) if roll < 0.35 else kind, start, end))
    free = [i for i, tag in enumerate(row.tags) if tag == "O" and row.tokens[i][0].isupper()]
    gold = {(e.type, e.text) for e in row.entities}
    if free and rng.random() < 0.3:
        i, kind = rng.choice(free), rng.choice(TYPES)
        if (kind, row.tokens[i]) not in gold:  # a text that names no gold entity, so it identifies its span
            spans.append((kind, i, i + 1))
    return sorted(spans, key=lambda s: s[1])


def test_strict_scores_equal_seqeval(rows):
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    rng = random.Random(0)
    y_true, y_pred, predictions = [], [], []
    for row in rows:
        spans = perturb(row, rng)
        y_true.append(row.tags)
        y_pred.append(bio.encode(spans, len(row.tokens)))
        predictions.append([{"type": kind, "text": " ".join(row.tokens[a:b])} for kind, a, b in spans])
    ours = ner.score(predictions, rows, SPEC)
    assert ours["strict"]["micro"]["tp"] > 1000 and 0.6 < ours["f1"] < 0.9  # a real, imperfect prediction
    assert ours["precision"] == pytest.approx(precision_score(y_true, y_pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(y_true, y_pred), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1_score(y_true, y_pred), abs=1e-12)
    report = classification_report(y_true, y_pred, output_dict=True, digits=10)
    for kind in TYPES:
        mine = ours["strict"]["per_type"][kind]
        theirs = report[kind]
        assert (mine["precision"], mine["recall"], mine["f1"]) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"]), abs=1e-12
        )
        assert mine["support"] == theirs["support"]
    assert ours["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)


def test_conll_column_file_reads_back_to_the_jsonl_rows(rows, tmp_path):
    """Writing the dev rows as a 4-column CoNLL file and reading it gives the same text and entities."""
    sample = rows[:300]
    path = tmp_path / "dev.conll"
    lines = ["-DOCSTART- -X- -X- O", ""]
    for row in sample:
        lines += [f"{token} X X {tag}" for token, tag in zip(row.tokens, row.tags, strict=True)] + [""]
    path.write_text("\n".join(lines))
    again = list(ner.read(path, SPEC))
    assert [r.text for r in again] == [r.text for r in sample]
    assert [r.entities for r in again] == [r.entities for r in sample]

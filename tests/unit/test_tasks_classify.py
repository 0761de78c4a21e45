"""Classification: readers (JSONL/CSV, ids or names), label inference, parser, metrics, confusion outputs."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, needs_shared

from tasktune.config.schema import ConfigError
from tasktune.config.task import TaskConfig
from tasktune.data.messages import RowError
from tasktune.tasks import classify
from tasktune.tasks.classify import ClassifyRow

SPEC = TaskConfig(name="classify", labels=["negative", "positive"])


def test_jsonl_reader_maps_ids_and_rejects_bad_rows_with_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [
        {"sentence": "great fun", "label": 1, "label_text": "positive"},
        {"sentence": "dull", "label": "negative"},
        {"sentence": "meh", "label": 2},
        {"sentence": "   ", "label": 0},
        {"sentence": "odd", "label": "neutral"},
        {"sentence": "flipped", "label": 0, "label_text": "positive"},
        {"sentence": "no label"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    items = list(classify.read(path, SPEC))
    assert [(r.text, r.label) for r in items[:2]] == [("great fun", "positive"), ("dull", "negative")]
    assert items[0].source == f"{path}:1"
    assert [(e.reason, e.source) for e in items[2:]] == [
        ("unknown_label", f"{path}:3"),
        ("empty_text", f"{path}:4"),
        ("unknown_label", f"{path}:5"),
        ("label_mismatch", f"{path}:6"),
        ("missing_field", f"{path}:7"),
        ("invalid_json", f"{path}:8"),
    ]


def test_csv_reader_with_field_overrides_and_quoted_newlines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('review,stars\n"good\nvery good",1\nbad,0\n,1\n')
    spec = TaskConfig(
        name="classify", labels=["negative", "positive"], text_field="review", label_field="stars"
    )
    first, second, third = classify.read(path, spec)
    assert (first.text, first.label, first.source) == ("good\nvery good", "positive", f"{path}:2")
    assert (second.label, second.source) == ("negative", f"{path}:4")
    assert isinstance(third, RowError) and third.reason == "empty_text" and third.source == f"{path}:5"


def test_labels_are_inferred_from_train_and_reported(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [("a", "spam"), ("b", "ham")])
    )
    labels, report = classify.infer_labels(train, TaskConfig(name="classify"))
    assert labels == ["ham", "spam"] and report.endswith("ham (1), spam (1)")
    (row, _) = classify.read(train, TaskConfig(name="classify", train_file=str(train)))
    assert row.label == "spam"


@needs_shared("classification/sst2")
def test_real_sst2_rows_read_with_inferred_labels():
    path = SHARED_DATA / "classification" / "sst2" / "dev.jsonl"
    labels, _ = classify.infer_labels(path, TaskConfig(name="classify"))
    assert labels == ["negative", "positive"]
    rows = list(classify.read(path, TaskConfig(name="classify", labels=labels)))
    assert len(rows) == 872 and all(isinstance(r, ClassifyRow) for r in rows)
    swapped = list(classify.read(path, TaskConfig(name="classify", labels=["positive", "negative"])))
    assert all(isinstance(r, RowError) and r.reason == "label_mismatch" for r in swapped)


def test_to_messages_and_constraint():
    spec = TaskConfig(
        name="classify", labels=["neg", "pos"], label_descriptions={"pos": "the reviewer liked it"}
    )
    conv = classify.to_messages(ClassifyRow("1", "f:1", "loved it", "pos"), spec)
    conv.check()
    assert conv.messages[0].content == (
        "Classify the text with one of these labels:\n- neg\n- pos: the reviewer liked it\n"
        "Answer with the label only.\nloved it"
    )
    assert conv.messages[1].content == "pos" and conv.meta["reference"] == "pos"
    assert classify.output_constraint(spec) == {"type": "choice", "choices": ["neg", "pos"]}
    with pytest.raises(ConfigError, match="task.labels"):
        classify.to_messages(ClassifyRow("1", "f:1", "loved it", "pos"), TaskConfig(name="classify"))


@pytest.mark.parametrize(
    "output, expected",
    [
        ("positive", "positive"),
        ("  Positive.\n", "positive"),
        ("NEGATIVE", "negative"),
        ("positive - the reviewer enjoyed it", "positive"),
        ("Positive sentiment", "positive"),
        ("positively", None),  # a label is only recognised as a whole word
        ("The sentiment is positive", None),  # not at the start
        ("", None),
        ("neutral", None),
    ],
)
def test_parser(output, expected):
    assert classify.parse(output, None, SPEC) == expected


def test_parser_needs_a_unique_label_at_the_start():
    spec = TaskConfig(name="classify", labels=["very good", "very bad", "good"])
    assert classify.parse("very good indeed", None, spec) == "very good"
    assert classify.parse("Good.", None, spec) == "good"
    assert classify.parse("good or very good", None, spec) == "good"
    zh = TaskConfig(name="classify", labels=["正面", "负面"])
    assert classify.parse("正面评价", None, zh) == "正面"


def test_scores_by_hand():
    spec = TaskConfig(name="classify", labels=["a", "b", "c"])
    rows = [ClassifyRow(str(i), "", "t", lab) for i, lab in enumerate("aaabbc")]
    predictions = ["a", "a", "b", "b", None, "a"]
    s = classify.score(predictions, rows, spec)
    assert s["accuracy"] == pytest.approx(3 / 6) and s["parse_failure_rate"] == pytest.approx(1 / 6)
    # a: tp 2, predicted 3, support 3 -> p r f1 = 2/3; b: tp 1, predicted 2, support 2 -> 1/2, 1/2, 1/2; c: 0
    assert s["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert (s["per_class"]["b"]["precision"], s["per_class"]["b"]["recall"]) == (0.5, 0.5)
    assert s["per_class"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "tp": 0,
        "predicted": 0,
        "support": 1,
    }
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert s["confusion"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 0], [1, 0, 0]],
                              "unparsed": [0, 1, 0]}  # fmt: skip
    table = classify.confusion_table(s["confusion"]["matrix"], ["a", "b", "c"], s["confusion"]["unparsed"])
    assert table.splitlines()[0].split() == ["true", "\\", "predicted", "a", "b", "c", "unparsed"]
    assert table.splitlines()[3].split() == ["b", "0", "1", "0", "1"]
    assert classify.per_class_table(s).splitlines()[2].split() == ["a", "0.6667", "0.6667", "0.6667", "3"]


def test_plot_confusion_writes_a_png(tmp_path):
    path = classify.plot_confusion([[5, 1], [2, 7]], ["negative", "positive"], tmp_path / "cm.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000

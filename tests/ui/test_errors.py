"""NER error classification for the error browser, record filters and classify confusion pairs."""

from __future__ import annotations

from collections import Counter

from tasktune.ui.errors import classify_ner, confusion_pairs, error_counts, filter_records, highlight_ner

TEXT = "Ada Park met Bob Stone of Acme Corp in Paris and Paris again."


def kinds(gold, predicted, text=TEXT):
    return [(e.kind, e.gold and e.gold.text, e.predicted and e.predicted.text)
            for e in classify_ner(text, gold, predicted)]


def ent(kind, text):
    return {"type": kind, "text": text}


def test_each_error_kind():
    gold = [ent("PER", "Ada Park"), ent("PER", "Bob Stone"), ent("ORG", "Acme Corp"), ent("LOC", "Paris")]
    predicted = [ent("PER", "Ada Park"),      # correct
                 ent("ORG", "Bob Stone"),     # right span, wrong type
                 ent("ORG", "Acme"),          # same type, shorter span
                 ent("LOC", "Oslo")]          # not in the sentence: spurious; gold Paris missed
    assert kinds(gold, predicted) == [
        ("correct", "Ada Park", "Ada Park"),
        ("wrong_type", "Bob Stone", "Bob Stone"),
        ("wrong_boundary", "Acme Corp", "Acme"),
        ("missed", "Paris", None),
        ("spurious", None, "Oslo"),
    ]


def test_overlap_with_another_type_and_repeated_mentions():
    gold = [ent("LOC", "Paris"), ent("LOC", "Paris")]
    # the second Paris is found at its own offset, so both predicted mentions are correct
    assert [k for k, *_ in kinds(gold, [ent("LOC", "Paris"), ent("LOC", "Paris")])] == ["correct", "correct"]
    gold = [ent("ORG", "Acme Corp")]
    assert kinds(gold, [ent("LOC", "Corp in Paris")])[0][0] == "wrong_type_and_boundary"


def test_unparsed_output_misses_everything():
    assert [k for k, *_ in kinds([ent("PER", "Ada Park")], None)] == ["missed"]
    assert kinds([], []) == []


def test_highlight_marks_every_entity_and_escapes():
    errors = classify_ner("<b>Ada</b> in Oslo", [ent("PER", "Ada")], [ent("LOC", "Oslo"), ent("ORG", "Zed")])
    page = highlight_ner("<b>Ada</b> in Oslo", errors)
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert 'class="ner-missed"' in page and 'class="ner-spurious"' in page
    assert "not in the sentence" in page and "Zed" in page
    twice = [ent("PER", "Ada"), ent("ORG", "Ada")]
    page = highlight_ner("Ada", classify_ner("Ada", [ent("PER", "Ada")], twice))
    assert "overlapping the marks above" in page and "ORG: Ada" in page


def test_filters_and_counts():
    records = [
        {"id": "a", "input": "Ada in Oslo", "reference": [ent("PER", "Ada")], "prediction": [ent("PER", "Ada")],
         "correct": True},
        {"id": "b", "input": "Bob in Rome", "reference": [ent("PER", "Bob"), ent("LOC", "Rome")],
         "prediction": [ent("PER", "Bob")], "correct": False},
    ]
    assert [r["id"] for r in filter_records(records, "wrong")] == ["b"]
    assert [r["id"] for r in filter_records(records, "all", "LOC")] == ["b"]
    assert [r["id"] for r in filter_records(records, "all", error_kind="missed")] == ["b"]
    assert error_counts(records) == Counter({"correct": 2, "missed": 1})


def test_confusion_pairs():
    records = [{"reference": "pos", "prediction": "neg", "correct": False},
               {"reference": "pos", "prediction": "neg", "correct": False},
               {"reference": "neg", "prediction": None, "correct": False},
               {"reference": "neg", "prediction": "neg", "correct": True}]
    assert confusion_pairs(records) == [("pos", "neg", 2), ("neg", "(none)", 1)]

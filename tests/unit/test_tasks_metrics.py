"""Shared metric helpers, on hand-computed counts."""

from __future__ import annotations

import pytest

from tasktune.tasks.metrics import format_table, macro, prf, ratio


def test_prf_from_counts():
    scores = prf(tp=3, predicted=4, gold=6)
    assert scores["precision"] == pytest.approx(0.75)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)  # 0.6
    assert (scores["tp"], scores["predicted"], scores["support"]) == (3, 4, 6)


def test_prf_is_zero_not_an_error_when_undefined():
    assert prf(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "predicted": 0, "support": 0}
    assert prf(0, 5, 0)["f1"] == 0.0
    assert ratio(1, 0) == 0.0 and ratio(1, 4) == 0.25


def test_macro_is_the_unweighted_mean():
    per_class = {"a": prf(1, 1, 1), "b": prf(0, 1, 3)}  # f1 1.0 and 0.0, whatever the supports
    assert macro(per_class) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert macro({}) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_format_table_aligns_columns_and_rounds_floats():
    table = format_table([["PER", 0.5, 12], ["ORGANISATION", 1.0, 3]], ["type", "f1", "support"])
    lines = table.splitlines()
    assert lines[0] == "type              f1  support"
    assert set(lines[1]) == {"-", " "}
    assert lines[2] == "PER           0.5000       12"
    assert lines[3] == "ORGANISATION  1.0000        3"

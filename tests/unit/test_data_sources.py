"""Sources: each file type yields rows with a real `file:line` / `file:#index`; bad lines are rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasktune.data.report import DataError, RejectReport
from tasktune.data.sources import read_rows

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


def test_jsonl_invalid_lines_become_rejects_with_line_numbers():
    report = RejectReport()
    rows = list(read_rows(ASSETS / "bad_rows.jsonl", report))
    sources = [s for _, s in rows]
    assert sources[0].endswith("bad_rows.jsonl:1")
    assert sources[-1].endswith("bad_rows.jsonl:14")  # line 11 is blank, 12 is a list
    assert not any(s.endswith((":2", ":11", ":12")) for s in sources)
    assert report.counts() == {"invalid_json": 1, "wrong_type": 1}
    assert [r.source.rsplit(":", 1)[1] for r in report.rejects] == ["2", "12"]


def test_json_list_csv_and_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "a.json").write_text(json.dumps([{"x": 1}, {"x": 2}]))
    (tmp_path / "b.csv").write_text('x,y\n3,"multi\nline"\n4,z\n')
    pq.write_table(pa.Table.from_pylist([{"x": 5, "tags": ["a", "b"]}]), tmp_path / "c.parquet")
    (tmp_path / "notes.txt").write_text("ignored: not a data file")
    report = RejectReport()
    rows = list(read_rows(tmp_path, report))
    assert [(row["x"], Path(s).name) for row, s in rows] == [
        (1, "a.json:#0"),
        (2, "a.json:#1"),
        ("3", "b.csv:3"),  # a quoted cell spanning lines 2-3: the line the record ends on
        ("4", "b.csv:4"),
        (5, "c.parquet:#0"),
    ]
    assert rows[-1][0]["tags"] == ["a", "b"]
    assert len(report) == 0


def test_json_lines_under_a_json_name_and_broken_json_list(tmp_path):
    (tmp_path / "lines.json").write_text('{"x": 1}\nnot json\n{"x": 2}\n')
    report = RejectReport()
    assert [r["x"] for r, _ in read_rows(tmp_path / "lines.json", report)] == [1, 2]
    assert report.rejects[0].source.endswith("lines.json:2") and report.rejects[0].reason == "invalid_json"
    (tmp_path / "broken.json").write_text('[{"x": 1},\n {"x": ]')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON .*line 2"):
        list(read_rows(tmp_path / "broken.json", RejectReport()))


def test_unreadable_paths_say_why(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        list(read_rows(tmp_path / "data.txt", RejectReport()))
    with pytest.raises(DataError, match="no such file"):
        list(read_rows(tmp_path / "absent.jsonl", RejectReport()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .json/.jsonl/.csv/.parquet files"):
        list(read_rows(tmp_path / "empty", RejectReport()))

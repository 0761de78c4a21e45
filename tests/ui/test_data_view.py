"""The Data tab's logic: rows as the model sees them, validation report, histograms."""

from __future__ import annotations

import json
from pathlib import Path

from tasktune.config.schema import Config
from tasktune.ui.data_view import DataSource, plot_histograms, preview, report_rows, summary_markdown, validate

ROOT = Path(__file__).resolve().parents[2]


def config(model_dir: Path, task: str | None = "ner") -> Config:
    cfg = Config()
    cfg.model.name_or_path = str(model_dir)
    cfg.data.dataset_dir = str(ROOT / "data")
    cfg.data.cutoff_len = 64
    cfg.task.name = task
    return cfg


def test_preview_marks_the_trained_part(tiny_llama_dir):
    page = preview(config(tiny_llama_dir), DataSource("task", str(ROOT / "data/demo/ner_train.jsonl")), n=2)
    assert page.count('class="trained"') == 2 and "ner_train.jsonl:1" in page
    registry = preview(config(tiny_llama_dir, None), DataSource("registry", "demo_ner_instruct"), n=1)
    assert registry.count('class="trained"') == 1


def test_validation_reports_rejects_lengths_and_labels(tmp_path, tiny_llama_dir):
    rows = [{"text": "Ada lives in Oslo.", "entities": [{"type": "PER", "text": "Ada", "start": 0, "end": 3},
                                                      {"type": "LOC", "text": "Oslo", "start": 13, "end": 17}]},
            {"text": "Bad offsets.", "entities": [{"type": "PER", "text": "Bad", "start": 5, "end": 9}]},
            {"entities": []}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = validate(config(tiny_llama_dir), DataSource("task", str(path)))
    assert summary.rows_read == 3 and len(summary.lengths) == 1
    assert summary.labels == {"PER": 1, "LOC": 1}
    reasons = {row[0]: row[1] for row in report_rows(summary.report)}
    assert set(reasons) == {"offset_mismatch", "missing_field"} and reasons["offset_mismatch"].endswith(":2")
    assert "3 rows read" in summary_markdown(summary)
    assert plot_histograms(summary) is not None

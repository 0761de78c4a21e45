"""`tasktune compress` on the real SmolLM2-135M-Instruct: int8 + 25 % Wanda + 2 dropped layers, scored on a few
dev sentences of the bundled NER demo set (short: a handful of rows, few new tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasktune.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # ~35 s of CPU; slower on a shared machine
DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def test_compress_smollm2_int8_wanda_and_dropped_layers(smollm2_dir, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    code = main([
        "compress", "model.name_or_path=smollm2-135m-instruct", "task.name=ner",
        f"task.train_file={DEMO / 'ner_train.jsonl'}", f"task.eval_file={DEMO / 'ner_dev.jsonl'}",
        "task.labels=[PER, LOC, ORG]", "eval.max_new_tokens=12", "eval.batch_size=4", "compress.source=base",
        "compress.methods=[int8, wanda, drop-layers]", "compress.sparsity=0.25", "compress.drop_layers=2",
        "compress.eval_limit=2", "compress.calibration_rows=2", "compress.calibration_tokens=128",
        "compress.speed_repeats=1", "compress.speed_new_tokens=4", "compress.measure_memory=false",
        f"output.dir={out}",
    ])
    assert code == 0
    report = json.loads((out / "compress" / "compress_report.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["uncompressed", "int8", "wanda", "drop-layers"]
    base = rows["uncompressed"]
    assert base["layers"] == 30 and rows["drop-layers"]["layers"] == 28
    assert len(rows["drop-layers"]["details"]["dropped_layers"]) == 2
    assert rows["int8"]["size_ratio"] < 0.6  # int8 decoder weights, fp32 tied embedding
    assert rows["wanda"]["details"]["sparsity"] == pytest.approx(0.25, abs=0.01)
    for row in rows.values():
        assert 0.0 <= row["metric_value"] <= 1.0 and row["examples_per_s"] > 0
    assert "compress report" in capsys.readouterr().out

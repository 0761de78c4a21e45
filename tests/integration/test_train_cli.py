"""`tasktune train` through the real CLI on the embedded SmolLM2 (a few steps), and the LLaMA-Factory registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_shared
from safetensors.torch import load_file

from tasktune.cli import main
from tasktune.config import load_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_lora_example_writes_every_promised_output(tmp_path, smollm2_dir):
    out = tmp_path / "x"
    code = main(["train", str(ROOT / "examples" / "lora-sft-demo.yaml"), "train.max_steps=2",
                 "train.batch_size=1", "train.logging_steps=1", "data.val_size=0", "data.cutoff_len=192",
                 f"output.dir={out}"])
    assert code == 0
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert load_config(out / "config.yaml").train.max_steps == 2
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(r["tokens_per_s"] > 0 for r in records if "loss" in r)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "rejected.jsonl").read_text() == ""


@needs_shared("instruct/llamafactory_demo")
def test_llamafactory_registry_trains_unchanged(tmp_path, smollm2_dir):
    out = tmp_path / "lf"
    code = main(["train", str(ROOT / "examples" / "llamafactory-demo.yaml"), "train.max_steps=1",
                 "train.batch_size=1", "train.grad_accum=1", "data.max_samples=20", "data.cutoff_len=256",
                 f"data.dataset_dir={ROOT.parent / 'shared/data/instruct/llamafactory_demo'}", f"output.dir={out}"])
    assert code == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_unknown_dataset_is_a_clear_cli_error(tmp_path, capsys):
    code = main(["train", str(ROOT / "examples" / "lora-sft-demo.yaml"), "data.datasets=demo_ner_instuct",
                 f"output.dir={tmp_path / 'y'}"])
    assert code != 0
    assert "did you mean" in capsys.readouterr().err

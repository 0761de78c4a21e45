"""The training loop end to end on a tiny random Llama: outputs, exact resume, two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasktune.config import load_config
from tasktune.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_alpaca(tmp_path_factory) -> Path:
    rows = [
        {"instruction": f"Name the colour number {i}.", "input": "", "output": f"Colour {i} is {c}."}
        for i, c in enumerate(["red", "green", "blue", "amber", "teal", "plum"] * 8)
    ]
    path = tmp_path_factory.mktemp("data") / "tiny.json"
    path.write_text(json.dumps(rows))
    return path


def _cfg(model_dir, data_path, out, *extra):
    return load_config(None, [
        f"model.name_or_path={model_dir}", f"data.datasets={data_path}", f"output.dir={out}",
        "data.cutoff_len=64", "train.batch_size=2", "train.logging_steps=1", "train.learning_rate=5e-3",
        "train.mixed_precision=no", "lora.r=4", "lora.alpha=8", "lora.dropout=0.1", *extra,
    ])


def test_lora_run_writes_adapter_config_log_and_plot(tiny_llama_dir, tiny_alpaca, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(tiny_llama_dir, tiny_alpaca, out, "train.max_steps=6", "data.val_size=4"))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "config.yaml").is_file() and load_config(out / "config.yaml").train.max_steps == 6
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "rejected.jsonl").is_file()
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 for r in steps)
    assert result.last_loss < result.first_loss
    assert result.eval_loss_before is not None and result.eval_loss < result.eval_loss_before


def test_second_run_into_same_dir_needs_overwrite(tiny_llama_dir, tiny_alpaca, tmp_path):
    from tasktune.config import ConfigError

    out = tmp_path / "run"
    train(_cfg(tiny_llama_dir, tiny_alpaca, out, "train.max_steps=1"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg(tiny_llama_dir, tiny_alpaca, out, "train.max_steps=1"))


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_resume_continues_exactly(tiny_llama_dir, tiny_alpaca, tmp_path):
    """2N steps straight == N steps, stop, resume for N more (same losses, same weights)."""
    n = 4
    straight = tmp_path / "straight"
    train(_cfg(tiny_llama_dir, tiny_alpaca, straight, f"train.max_steps={2 * n}", f"train.save_steps={n}"))
    assert (straight / "checkpoints" / f"step-{n}" / "trainer_state.json").is_file()
    ckpt_files = {p.name for p in (straight / "checkpoints" / f"step-{n}").iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "rng_state_0.json"} <= ckpt_files
    assert not [name for name in ckpt_files if name.endswith((".bin", ".pkl", ".pt"))], "no pickle in a checkpoint"
    ckpt_model = next((straight / "checkpoints" / f"step-{n}").glob("model*.safetensors"))
    assert all("lora_" in k for k in load_file(ckpt_model)), "a LoRA checkpoint must not hold the frozen base"

    # "Stop" at step N: a fresh output dir holding only what existed when step N was saved.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / f"step-{n}", resumed / "checkpoints" / f"step-{n}")
    lines = (straight / "train_log.jsonl").read_text().splitlines()
    (resumed / "train_log.jsonl").write_text("\n".join(lines[:n]) + "\n")
    result = train(_cfg(tiny_llama_dir, tiny_alpaca, resumed, f"train.max_steps={2 * n}",
                        f"train.save_steps={n}", "train.resume_from_checkpoint=latest"))
    assert result.global_step == 2 * n

    def losses(out):
        return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_two_processes_train_together(tiny_llama_dir, tiny_alpaca, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks train on different halves and end identical."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tasktune.cli", "train",
           f"model.name_or_path={tiny_llama_dir}", f"data.datasets={tiny_alpaca}", f"output.dir={out}",
           "data.cutoff_len=64", "train.batch_size=2", "train.max_steps=3", "train.mixed_precision=no",
           "train.logging_steps=1", "lora.r=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "dist" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    seen0, seen1 = set(ranks[0]["units"]), set(ranks[1]["units"])
    assert seen0 and seen1 and not seen0 & seen1
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_tensorboard_logging_when_asked(tiny_llama_dir, tiny_alpaca, tmp_path):
    out = tmp_path / "tb"
    train(_cfg(tiny_llama_dir, tiny_alpaca, out, "train.max_steps=2", "train.report_to=jsonl,tensorboard"))
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_crash_mid_save_leaves_no_complete_checkpoint(tiny_llama_dir, tiny_alpaca, tmp_path, monkeypatch):
    """A save that dies half-way leaves only `step-N.tmp`, which `latest` ignores."""
    from tasktune.train import checkpoint
    from tasktune.train.checkpoint import checkpoints, resolve_resume

    real_write = checkpoint.write_state

    def dying_write(*args, **kwargs):
        real_write(*args, **kwargs)
        raise KeyboardInterrupt("power cut after the weights, before the marker")

    monkeypatch.setattr(checkpoint, "write_state", dying_write)
    out = tmp_path / "crash"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_llama_dir, tiny_alpaca, out, "train.max_steps=4", "train.save_steps=2"))
    assert (out / "checkpoints" / "step-2.tmp").is_dir()
    assert checkpoints(out / "checkpoints") == []
    assert resolve_resume("latest", out / "checkpoints") is None


def test_two_runs_in_one_process_may_use_different_precisions(tiny_llama_dir, tiny_alpaca, tmp_path):
    first = train(_cfg(tiny_llama_dir, tiny_alpaca, tmp_path / "a", "train.max_steps=1"))
    second = train(_cfg(tiny_llama_dir, tiny_alpaca, tmp_path / "b", "train.max_steps=1",
                        "train.mixed_precision=bf16"))
    assert first.global_step == second.global_step == 1


def test_best_checkpoint_is_kept_by_the_task_metric(tiny_llama_dir, tiny_alpaca, tmp_path):
    """The evaluator's "metric" picks the best step; best/ holds that step's adapter and says which step won."""
    scores = iter([0.50, 0.90, 0.70])
    seen_steps = []

    def evaluator(model, tokenizer, step):
        seen_steps.append(step)
        return {"f1": (value := next(scores)), "metric": value}

    out = tmp_path / "best"
    result = train(_cfg(tiny_llama_dir, tiny_alpaca, out, "train.max_steps=3", "train.eval_steps=1"),
                   evaluator=evaluator)
    assert seen_steps == [1, 2, 3]
    assert (result.best_step, result.best_metric) == (2, 0.90)
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 2
    assert (out / "best" / "adapter" / "adapter_model.safetensors").is_file()
    logged = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if "eval_f1" in x]
    assert [r["eval_f1"] for r in logged] == [0.50, 0.90, 0.70]

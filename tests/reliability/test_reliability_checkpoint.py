"""Checkpoints that were tampered with, truncated or made with other settings: refused clearly, nothing runs."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from tasktune.config.load import load_config
from tasktune.train.checkpoint import DONE_MARK, CheckpointError, TrainerState, load_checkpoint
from tasktune.train.loop import train
from tasktune.train.state_io import file_digest

STEPS, SAVE = 6, 2


class Planted:
    """Unpickling this creates a marker file: what an attacker's code would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _cfg(model_dir, data, out, *extra):
    return load_config(None, [
        f"model.name_or_path={model_dir}", f"data.datasets={data}", f"output.dir={out}", "data.cutoff_len=64",
        "train.batch_size=2", "train.logging_steps=1", "train.mixed_precision=no", "lora.r=4", "lora.alpha=8",
        f"train.max_steps={STEPS}", f"train.save_steps={SAVE}", "train.save_total_limit=0", *extra,
    ])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(16)]
    path = tmp_path_factory.mktemp("ckdata") / "rows.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama_dir, data) -> Path:
    """A run of 6 steps with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ckrun") / "run"
    train(_cfg(tiny_llama_dir, data, out))
    return out


@pytest.fixture(scope="module")
def live(finished, tiny_llama_dir, data):
    """The objects a resume loads into (model, optimizer, schedule), built once, and the run's fingerprint."""
    from tasktune.train.loop import new_accelerator
    from tasktune.train.optim import build_optimizer, build_scheduler
    from tasktune.train.route import route_for

    cfg = _cfg(tiny_llama_dir, data, finished)
    model = route_for(cfg).build_model(cfg)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, STEPS)
    fingerprint = json.loads((finished / "checkpoints" / "step-4" / DONE_MARK).read_text())["fingerprint"]
    return new_accelerator("no"), model, optimizer, scheduler, fingerprint


def _load(live, ckpt: Path) -> TrainerState:
    accelerator, model, optimizer, scheduler, fingerprint = live
    state = TrainerState()
    load_checkpoint(accelerator, ckpt, state, model, optimizer, scheduler, fingerprint)
    return state


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _rewrite_manifest(ckpt: Path) -> None:
    """Make the manifest match the files again, as an attacker who edits a checkpoint would."""
    manifest = json.loads((ckpt / DONE_MARK).read_text())
    manifest["files"] = {name: file_digest(ckpt / name) for name in manifest["files"]}
    (ckpt / DONE_MARK).write_text(json.dumps(manifest))


def _resume(model_dir, data, out, setting, *extra):
    return train(_cfg(model_dir, data, out, f"train.resume_from_checkpoint={setting}", *extra))


def test_the_planted_pickle_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()  # the weapon works; the tests below show that tasktune never fires it


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                                  "rng_state_0.json", DONE_MARK])
def test_a_planted_pickle_in_any_checkpoint_file_is_refused_and_runs_nothing(run, live, tmp_path, name):
    ckpt, marker = run / "checkpoints" / "step-4", tmp_path / "pwned"
    assert _load(live, ckpt).global_step == 4  # the untouched checkpoint loads
    torch.save(Planted(marker), ckpt / name)
    if name != DONE_MARK:
        _rewrite_manifest(ckpt)
    with pytest.raises(CheckpointError, match=re.escape(name)):
        _load(live, ckpt)
    assert not marker.exists()


def test_an_old_pickle_based_checkpoint_is_refused_through_the_cli(run, tiny_llama_dir, data, tmp_path, capsys):
    from tasktune.cli import main

    ckpt, marker = run / "checkpoints" / "step-4", tmp_path / "pwned"
    torch.save(Planted(marker), ckpt / "custom_checkpoint_0.pkl")
    torch.save(Planted(marker), ckpt / "random_states_0.pkl")
    (ckpt / DONE_MARK).write_text(json.dumps({"global_step": 4}))  # what accelerate-era checkpoints held
    args = [f"model.name_or_path={tiny_llama_dir}", f"data.datasets={data}", f"output.dir={run}",
            "data.cutoff_len=64", f"train.resume_from_checkpoint={ckpt}"]
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "pickle" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_corrupt_rng_state_is_refused_not_skipped(run, live):
    ckpt = run / "checkpoints" / "step-4"
    (ckpt / "rng_state_0.json").write_text(json.dumps({"python": [3, [1, 2], None]}))
    _rewrite_manifest(ckpt)
    with pytest.raises(CheckpointError, match="rng_state_0.json"):
        _load(live, ckpt)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_a_truncated_file_is_named_and_latest_falls_back(run, tiny_llama_dir, data, capsys, name):
    ckpt = run / "checkpoints" / "step-4"
    blob = (ckpt / name).read_bytes()
    (ckpt / name).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=re.escape(name) + ": truncated"):
        _resume(tiny_llama_dir, data, run, ckpt)
    result = _resume(tiny_llama_dir, data, run, "latest")
    assert result.global_step == STEPS
    err = capsys.readouterr()
    assert "skipping damaged checkpoint step 4" in err.err and "step-2" in err.err
    assert "resumed from" in err.out and "step-2" in err.out


@pytest.mark.parametrize("change, expected", [
    ("lora.r=8", "lora.r: checkpoint 4, this run 8"),
    ("lora.target_modules=q_proj,v_proj", "lora.target_modules"),
    ("train.batch_size=4", "data_order.batch_size"),
])
def test_a_resume_with_other_settings_says_what_differs(run, tiny_llama_dir, data, change, expected):
    with pytest.raises(CheckpointError, match="other settings") as info:
        _resume(tiny_llama_dir, data, run, "latest", change)
    assert expected in str(info.value)


def test_a_resume_on_another_base_model_says_so(run, tiny_llama_dir, data, tmp_path):
    other = tmp_path / "other-base"
    other.symlink_to(tiny_llama_dir, target_is_directory=True)
    with pytest.raises(CheckpointError, match="base_model: checkpoint"):
        _resume(other, data, run, "latest")


def test_latest_without_a_checkpoint_says_so(tiny_llama_dir, data, tmp_path, capsys):
    result = train(load_config(None, [
        f"model.name_or_path={tiny_llama_dir}", f"data.datasets={data}", f"output.dir={tmp_path / 'fresh'}",
        "data.cutoff_len=64", "train.max_steps=1", "train.mixed_precision=no", "lora.r=4",
        "train.resume_from_checkpoint=latest"]))
    assert result.global_step == 1
    assert "no checkpoint under" in capsys.readouterr().out


def test_resume_keeps_one_log_line_per_step_and_survives_a_torn_line(run, tiny_llama_dir, data):
    log = run / "train_log.jsonl"
    with log.open("a") as fh:
        fh.write('{"step": 7, "lo')  # the run was killed mid-write
    _resume(tiny_llama_dir, data, run, run / "checkpoints" / "step-2")
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, STEPS + 1))
    assert (run / "loss.png").is_file()

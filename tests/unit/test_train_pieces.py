"""Batch plan, learning-rate schedule and checkpoint discovery: the pure parts of the training loop."""

import json

import pytest

from tasktune.train.checkpoint import DONE_MARK, checkpoints, resolve_resume
from tasktune.train.optim import lr_factor
from tasktune.train.order import BatchPlan
from tasktune.train.state_io import CheckpointError, file_digest


def _plan(n=23, batch=2, accum=2, world=2):
    return BatchPlan(lengths=[(i * 7) % 13 + 1 for i in range(n)], batch_size=batch, grad_accum=accum,
                     world_size=world, seed=3)


def test_plan_is_deterministic_and_covers_every_unit_each_epoch():
    plan = _plan()
    batches = plan.epoch_batches(0)
    assert batches == plan.epoch_batches(0)
    assert batches != plan.epoch_batches(1)
    assert set(i for b in batches for i in b) == set(range(23))
    assert len(batches) == plan.steps_per_epoch * plan.batches_per_step


def test_ranks_get_disjoint_micro_batches_of_equal_count():
    plan = _plan()
    batches = plan.epoch_batches(0)
    for step in range(plan.steps_per_epoch):
        r0, r1 = plan.step_batches(batches, step, 0), plan.step_batches(batches, step, 1)
        assert len(r0) == len(r1) == plan.grad_accum
        assert r0 != r1
    first = plan.step_batches(batches, 0, 0) + plan.step_batches(batches, 0, 1)
    assert sorted(map(tuple, first)) == sorted(map(tuple, batches[: plan.batches_per_step]))


def test_total_steps_from_epochs_or_max_steps():
    plan = _plan(n=40, batch=4, accum=1, world=1)
    assert plan.steps_per_epoch == 10
    assert plan.total_steps(2.5, -1) == 25
    assert plan.total_steps(2.5, 7) == 7


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(kind):
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, kind) for s in range(total)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert max(factors) == pytest.approx(1.0)
    if kind == "constant":
        assert factors[-1] == 1.0
    else:
        assert factors[-1] < 0.05
        assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :], strict=False))


def test_only_complete_checkpoints_count(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):
        d = tmp_path / f"step-{step}"
        d.mkdir()
        if complete:
            (d / "scheduler.json").write_text("{}")
            files = {"scheduler.json": file_digest(d / "scheduler.json")}
            (d / DONE_MARK).write_text(json.dumps({"format": 2, "files": files}))
    (tmp_path / "step-20.tmp").mkdir()
    assert [s for s, _ in checkpoints(tmp_path)] == [5, 10]
    assert resolve_resume("latest", tmp_path).name == "step-10"
    assert resolve_resume("latest", tmp_path / "none") is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "step-15"), tmp_path)

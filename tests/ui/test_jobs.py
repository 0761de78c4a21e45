"""The job store and runner: queue on disk, one job at a time, stop, failures kept with their log."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tasktune.ui import jobs
from tasktune.ui.jobs import JobStore, Runner


@pytest.fixture
def fake_cli(monkeypatch):
    """Jobs run a tiny Python script instead of the tasktune CLI (the args are its code)."""
    monkeypatch.setattr(jobs, "cli_argv", lambda args: [sys.executable, "-c", args[1]])


def test_jobs_run_one_at_a_time_in_order(tmp_path, fake_cli):
    store = JobStore(tmp_path)
    first = store.submit("train", ["train", "import time; print('one'); time.sleep(0.5)"], tmp_path / "a")
    second = store.submit("eval", ["eval", "print('two')"], tmp_path / "b")
    runner = Runner(store)
    runner.tick()
    assert [j.status for j in store.all()] == ["running", "queued"]
    runner.tick()
    assert store.get(second.id).status == "queued"  # never two at once
    assert runner.wait_idle(30)
    done = {j.id: j for j in JobStore(tmp_path).all()}  # a fresh store (a page refresh) reads the same
    assert done[first.id].status == "finished" and done[second.id].status == "finished"
    assert done[first.id].started <= done[second.id].started
    assert "one" in store.log_tail(first.id) and "two" in store.log_tail(second.id)
    assert json.loads(store.path(first.id).read_text())["returncode"] == 0


def test_a_failed_job_keeps_its_error(tmp_path, fake_cli):
    store = JobStore(tmp_path)
    job = store.submit("train", ["train", "import sys; print('bad config'); sys.exit(2)"], tmp_path / "a")
    runner = Runner(store)
    assert runner.wait_idle(30)
    failed = store.get(job.id)
    assert (failed.status, failed.returncode) == ("failed", 2)
    assert "bad config" in failed.error


def test_stop_a_running_job_and_drop_a_queued_one(tmp_path, fake_cli):
    store = JobStore(tmp_path)
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('checkpoint saved', flush=True), sys.exit(0)))\n"
            "print('started', flush=True)\ntime.sleep(60)")
    running = store.submit("train", ["train", code], tmp_path / "a")
    queued = store.submit("train", ["train", "print('never')"], tmp_path / "b")
    runner = Runner(store)
    runner.tick()
    deadline = time.monotonic() + 30
    while "started" not in store.log_tail(running.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    store.cancel(queued.id)
    store.cancel(running.id)
    assert runner.wait_idle(30)
    assert store.get(running.id).status == "stopped"
    assert "checkpoint saved" in store.log_tail(running.id)
    assert store.get(queued.id).status == "stopped" and store.get(queued.id).started is None


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError):
        JobStore(tmp_path).submit("rm", ["rm", "-rf"], tmp_path)

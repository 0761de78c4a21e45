"""Jobs of the web UI: `tasktune train|eval|export` subprocesses, queued on disk, one at a time.

Every job is a JSON file under `<runs dir>/.tasktune-ui/jobs/`; its output goes to a log file next to it.
The browser only reads these files, so a page refresh, a second tab or a restarted server sees the same
queue. Stopping sends SIGTERM: training saves a checkpoint and exits cleanly (resumable with
train.resume_from_checkpoint=latest). Commands are argument lists, never shell strings.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = ".tasktune-ui"
ACTIVE = ("queued", "running")
KINDS = ("train", "eval", "export")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Job:
    id: str
    kind: str
    """train | eval | export."""
    args: list[str]
    """Arguments after `tasktune` (the subcommand first); the config path is among them."""
    output_dir: str
    """The run directory the job writes (resolved)."""
    status: str = "queued"
    """queued | running | finished | failed | stopped."""
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    returncode: int | None = None
    stop_requested: bool = False
    error: str | None = None
    """The last lines of the log when the job failed."""

    @property
    def command(self) -> str:
        """The command as a user would type it (shown, never run through a shell)."""
        return shlex.join(["tasktune", *self.args])


class JobStore:
    """Job files under `root/.tasktune-ui/jobs`; safe to share between threads of one server."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.dir = self.root / STATE_DIR / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.configs = self.root / STATE_DIR / "configs"
        self.configs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    def path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def log_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.log"

    def save(self, job: Job) -> Job:
        with self._lock:
            tmp = self.path(job.id).with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(job), indent=2))
            tmp.replace(self.path(job.id))
        return job

    def get(self, job_id: str) -> Job | None:
        path = self.path(job_id)
        if not path.is_file():
            return None
        try:
            return Job(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            return None

    def all(self) -> list[Job]:
        """Every job, oldest first."""
        jobs = [self.get(p.stem) for p in self.dir.glob("*.json")]
        return sorted((j for j in jobs if j is not None), key=lambda j: (j.created, j.id))

    def submit(self, kind: str, args: list[str], output_dir: str | Path) -> Job:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        return self.save(Job(job_id, kind, [str(a) for a in args], str(Path(output_dir).resolve())))

    def running(self) -> Job | None:
        return next((j for j in self.all() if j.status == "running"), None)

    def queue(self) -> list[Job]:
        return [j for j in self.all() if j.status == "queued"]

    def for_output(self, output_dir: str | Path) -> list[Job]:
        resolved = str(Path(output_dir).resolve())
        return [j for j in self.all() if j.output_dir == resolved]

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        path = self.log_path(job_id)
        if not path.is_file():
            return ""
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 64_000))
            text = fh.read().decode("utf-8", errors="replace")
        # tqdm redraws with carriage returns (keep the last state of each line) and moves with escape codes
        text = ANSI_ESCAPE.sub("", text.replace("\r\n", "\n"))
        shown = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
        return "\n".join(shown[-lines:])

    def cancel(self, job_id: str) -> Job | None:
        """Drop a queued job, or ask a running one to stop (SIGTERM: a checkpoint is saved first)."""
        with self._lock:
            job = self.get(job_id)
            if job is None or job.status not in ACTIVE:
                return job
            job.stop_requested = True
            if job.status == "queued":
                job.status, job.ended = "stopped", time.time()
            elif job.pid is not None and pid_alive(job.pid):
                os.kill(job.pid, signal.SIGTERM)
            return self.save(job)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cli_argv(args: list[str]) -> list[str]:
    """The tasktune CLI in this interpreter (the venv's), with `args`."""
    return [sys.executable, "-m", "tasktune.cli", *args]


class Runner:
    """Starts the oldest queued job when none runs, waits for it and records how it ended.

    `tick()` does one round (tests call it directly); `start()` runs it on a daemon thread every `interval`.
    Jobs left `running` by an earlier server are watched through their pid.
    """

    def __init__(self, store: JobStore, interval: float = 0.5, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None):
        self.store = store
        self.interval = interval
        self.env = env
        self.cwd = str(cwd) if cwd else None
        self._procs: dict[str, subprocess.Popen] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> Runner:
        self._thread = threading.Thread(target=self._loop, name="tasktune-ui-jobs", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the server stays up whatever a job does
                print(f"tasktune ui: job runner: {exc!r}", file=sys.stderr)
            self._stop.wait(self.interval)

    def tick(self) -> None:
        running = self.store.running()
        if running is not None:
            self._check(running)
            if self.store.running() is not None:
                return
        queued = self.store.queue()
        if queued:
            self._launch(queued[0])

    def _launch(self, job: Job) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = self.store.log_path(job.id).open("ab")
        try:
            proc = subprocess.Popen(cli_argv(job.args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.cwd, start_new_session=True)
        except OSError as exc:
            job.status, job.error, job.ended = "failed", f"could not start: {exc}", time.time()
            self.store.save(job)
            return
        finally:
            log.close()
        self._procs[job.id] = proc
        job.status, job.pid, job.started = "running", proc.pid, time.time()
        self.store.save(job)

    def _check(self, job: Job) -> None:
        proc = self._procs.get(job.id)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return
            del self._procs[job.id]
        elif job.pid is not None and pid_alive(job.pid):
            return  # started by an earlier server: watch it until it is gone
        else:
            code = None
        self._finish(job, code)

    def _finish(self, job: Job, code: int | None) -> None:
        job = self.store.get(job.id) or job  # a stop may have been requested meanwhile
        job.ended, job.returncode = time.time(), code
        if job.stop_requested:
            job.status = "stopped"
        elif code == 0 or (code is None and _looks_finished(job)):
            job.status = "finished"
        else:
            job.status = "failed"
            tail = self.store.log_tail(job.id, 15)
            job.error = tail or f"exit code {code}"
        self.store.save(job)

    def wait_idle(self, timeout: float) -> bool:
        """Tick until no job is queued or running (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if not any(j.status in ACTIVE for j in self.store.all()):
                return True
            time.sleep(0.1)
        return False


def _looks_finished(job: Job) -> bool:
    out = Path(job.output_dir)
    if job.kind == "train":
        return (out / "adapter").is_dir() or (out / "model").is_dir()
    return any(out.glob("**/metrics.json")) or (out / "export_report.json").is_file()


def describe(job: Job) -> dict[str, Any]:
    """One row of the queue table."""
    elapsed = (job.ended or time.time()) - job.started if job.started else None
    return {"job": job.id, "kind": job.kind, "status": job.status, "output": job.output_dir,
            "elapsed_s": round(elapsed) if elapsed is not None else None, "command": job.command}

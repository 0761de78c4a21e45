"""Process-wide CPU settings chosen once at start-up: OpenMP waiting policy and torch's thread count.

With OpenMP's default waiting, torch's worker threads spin (GNU OpenMP: 300,000 rounds) between parallel
regions; when another CPU-bound process shares the cores, each region waits for a thread that is
descheduled, and a step gets 10-25x slower. Passive waiting (threads sleep at once) keeps most of the
throughput under contention but costs about 15 % on an idle machine. tasktune spins briefly, then sleeps:
`GOMP_SPINCOUNT=3000` (`bench/profile_step.py`, cutoff 512, tokens/s idle / with one CPU-bound process
beside it: passive 219 / 148, 3,000 rounds 259 / 132, 10,000 rounds 251 / 112, 100,000 rounds 267 / 49,
OpenMP's default 263). OpenMP reads these when its runtime loads, so they must be in the environment before
torch is imported: `tasktune/__init__.py` calls `set_wait_policy()` first thing.

The knobs: `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` (either one set by the user: tasktune leaves both alone),
`TASKTUNE_THREADS` (torch's intra-op threads; default: the cores this process may run on), read once at
start-up.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

THREADS_ENV = "TASKTUNE_THREADS"


SPIN_COUNT = "3000"
"""GNU OpenMP's spin rounds before an idle thread sleeps (see above)."""


def set_wait_policy() -> None:
    """Brief OpenMP spinning unless the user chose a policy or a spin count; no effect once torch is loaded."""
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


KNOWN_NOISE = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check",
}
"""Logger -> the start of a message it logs on every command and that says nothing to a tasktune user: on
AVX512-BF16 CPUs bitsandbytes (imported by peft) asks the Hub for an optional 4-bit kernel, which tasktune's
offline runs never have, and `kernels` says it skips that kernel's trust check."""


_quiet = False


def quiet_known_noise() -> None:
    """Drop the messages of `KNOWN_NOISE` and transformers' deprecation warning for `is_gradient_checkpointing`
    (peft reads the old name whenever it wraps a model); everything else those libraries say still shows.
    Called once by the `tasktune` command and the demo before they import them (a second call does nothing)."""
    global _quiet
    if _quiet:
        return
    _quiet = True
    for name, start in KNOWN_NOISE.items():
        logging.getLogger(name).addFilter(lambda record, start=start: not record.getMessage().startswith(start))
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


_frozen = 0
_frozen_lock = threading.Lock()


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep the objects that exist when the block starts out of Python's cyclic garbage collector until it ends.

    A loaded model and tokenizer hold 300-560k tracked objects (SmolLM2: modules, vocabularies, the
    constraints' tables), and a full collection scans them all: 0.15-0.28 s here, wherever an evaluation's
    allocations happen to trigger one (inside the decoding loop in about one demo evaluation of three; inside
    the token table's build in a cold one). Frozen, they are skipped; the collections that still run scan the
    young objects only. Blocks nest (across threads too): the last one to end unfreezes."""
    global _frozen
    with _frozen_lock:
        gc.freeze()
        _frozen += 1
    try:
        yield
    finally:
        with _frozen_lock:
            _frozen -= 1
            if not _frozen:
                gc.unfreeze()


ALLOCATOR_ENV = "TASKTUNE_ALLOCATOR"
ALLOCATORS = {"tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}
"""Allocators `TASKTUNE_ALLOCATOR` may name (else a library path, or `system` for the C library's malloc)."""
_PRELOADED_ENV = "_TASKTUNE_ALLOCATOR_PRELOADED"


def allocator_library(choice: str | None = None) -> str | None:
    """The malloc library to preload: $TASKTUNE_ALLOCATOR (default tcmalloc) found on this machine, a path to
    one, or None (system, not found, not Linux)."""
    import ctypes.util

    choice = (choice if choice is not None else os.environ.get(ALLOCATOR_ENV, "tcmalloc")).strip()
    if not sys.platform.startswith("linux") or choice.lower() in ("", "system", "glibc", "none"):
        return None
    if "/" in choice:
        return choice if os.path.isfile(choice) else None
    name = ALLOCATORS.get(choice.lower())
    if name is None:
        raise ValueError(f"{ALLOCATOR_ENV}={choice!r}: expected one of {', '.join(ALLOCATORS)}, system, or a path")
    return ctypes.util.find_library(name)


def preload_allocator(module: str, argv: list[str]) -> None:
    """Run `python -m module *argv` again (`python module *argv` where `module` is a .py path, for scripts
    such as the benchmarks), now, with `allocator_library()` preloaded; returns (doing nothing) when there is
    none, it is loaded already, or the exec fails.

    PyTorch's CPU tensors come from malloc. glibc keeps the activation-sized blocks (1-6 MB) freed after each
    training step in its heaps, so resident memory grows well past live memory: `bench/profile_step.py`
    (2 x 1024 packed tokens, 5 steps) peaked at 3.52 GB with glibc, 2.06 GB with tcmalloc at the same step
    time, 2.27 GB with jemalloc. The allocator must be in place before the process starts, hence the exec.
    Called by the `tasktune` command, `python -m tasktune.cli` and the demo before they import torch."""
    if os.environ.get(_PRELOADED_ENV):
        return
    try:
        library = allocator_library()
    except ValueError as exc:
        print(f"tasktune: {exc}; using the system allocator", file=sys.stderr)
        return
    if library is None:
        return
    preload = os.environ.get("LD_PRELOAD", "")
    env = {**os.environ, _PRELOADED_ENV: library, "LD_PRELOAD": f"{library} {preload}".strip(),
           "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": os.environ.get("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD",
                                                                   str(1 << 40))}  # no "large alloc" lines
    try:
        sys.stdout.flush()
        target = [module] if module.endswith(".py") else ["-m", module]
        os.execve(sys.executable, [sys.executable, *target, *argv], env)
    except OSError:
        return


def without_preloaded_allocator(env: dict[str, str]) -> dict[str, str]:
    """`env` without the allocator `preload_allocator` put in place (for a child process that should start
    with its own default, such as another project's baseline run)."""
    library = env.get(_PRELOADED_ENV)
    env = {k: v for k, v in env.items() if k != _PRELOADED_ENV}
    if library and "LD_PRELOAD" in env:
        rest = " ".join(part for part in env["LD_PRELOAD"].split() if part != library)
        env = {k: v for k, v in env.items() if k != "LD_PRELOAD"} | ({"LD_PRELOAD": rest} if rest else {})
    return env


def loaded_allocator() -> str | None:
    """The preloaded malloc library mapped into this process (tcmalloc/jemalloc), or None (the C library's)."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return None
    return next((name for name, lib in ALLOCATORS.items() if f"lib{lib}" in text), None)


TRIM_ENV = "TASKTUNE_MALLOC_TRIM"
_LIBC: object | None = None


def _glibc():
    """glibc through ctypes, or None (another C library, or not Linux)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _LIBC = libc if hasattr(libc, "malloc_trim") else False
            except OSError:
                pass
    return _LIBC or None


def release_freed_memory() -> bool:
    """With $TASKTUNE_MALLOC_TRIM=1: hand the pages of freed heap memory back to the system (glibc
    `malloc_trim`) after each training step. Returns whether it ran.

    PyTorch's CPU tensors come from malloc; the many activation-sized blocks (1-4 MB) freed after each step
    stay mapped in glibc's heaps, and mixing sizes step after step grows the resident memory (measured on
    `bench/train_throughput.py`'s run: 3.0 GB after the first step, 3.65 GB by the third, live memory
    unchanged). Trimming keeps the peak at 3.33 GB instead of 3.77, but re-faulting those pages every step
    cost about 20 % of the step time there, so it is off by default."""
    if os.environ.get(TRIM_ENV, "0").strip() != "1":
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, else $TASKTUNE_THREADS, else the usable cores; returns it."""
    import torch

    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        threads = int(value) if value.isdigit() and int(value) > 0 else usable_cores()
    threads = max(1, threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def bf16_supported() -> bool:
    """Whether this machine runs bf16 matmuls natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def inference_dtype(setting: str = "auto"):
    """The weight dtype for generation: `auto` is bf16 where the hardware runs it, else float32."""
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    return torch.bfloat16 if bf16_supported() else torch.float32


def resolve_precision(setting: str) -> str:
    """Mixed precision of training: `auto` is bf16 where the device runs it, else fp16 on CUDA, else none."""
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if bf16_supported() else "no"


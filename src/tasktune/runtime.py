"""Process-wide CPU settings chosen once at start-up: OpenMP waiting policy and torch's thread count.

With OpenMP's default (active) waiting, torch's worker threads spin between parallel regions; when another
CPU-bound process shares the cores, each region waits for a thread that is descheduled, and a step gets
10-25x slower. Passive waiting (threads sleep when idle) costs little on an idle machine and keeps most of
the throughput under contention. OpenMP reads the policy when its runtime loads, so it must be in the
environment before torch is imported: `tasktune/__init__.py` calls `set_wait_policy()` first thing.

The knobs: `OMP_WAIT_POLICY` (PASSIVE unless set), `TASKTUNE_THREADS` (torch's intra-op threads;
default: the cores this process may run on), both read once at start-up.
"""

from __future__ import annotations

import os
import sys

THREADS_ENV = "TASKTUNE_THREADS"


def set_wait_policy() -> None:
    """Passive OpenMP waiting unless the user chose a policy; no effect once torch is loaded."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


MMAP_THRESHOLD_ENV = "TASKTUNE_MMAP_THRESHOLD"
"""Bytes from which glibc serves an allocation with mmap (returned to the system when freed); 0 leaves
glibc's own adaptive threshold."""
DEFAULT_MMAP_THRESHOLD = 1 << 20


def return_freed_memory() -> int:
    """Make glibc hand large freed blocks back to the system: a fixed mmap threshold of 1 MiB instead of its
    adaptive one, which climbs to 32 MiB after the first large frees and then keeps tensors of up to that size
    on the heap, where freed activations linger in the process's resident memory (peak RSS). Returns the
    threshold set (0: unchanged; not glibc, or $TASKTUNE_MMAP_THRESHOLD=0)."""
    value = os.environ.get(MMAP_THRESHOLD_ENV, "").strip()
    threshold = int(value) if value.isdigit() else DEFAULT_MMAP_THRESHOLD
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return 0
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return threshold if libc.mallopt(m_mmap_threshold, threshold) == 1 else 0
    except (OSError, AttributeError):  # not glibc
        return 0


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

"""The allocator tasktune preloads: chosen by TASKTUNE_ALLOCATOR, mapped into the re-executed process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tasktune.runtime import allocator_library


def test_allocator_choices():
    assert allocator_library("system") is None and allocator_library("") is None
    assert allocator_library("/no/such/libmalloc.so") is None
    with pytest.raises(ValueError, match="TASKTUNE_ALLOCATOR"):
        allocator_library("hoard")


def _settings(choice: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("_TASKTUNE")}
    env["TASKTUNE_ALLOCATOR"] = choice
    done = subprocess.run([sys.executable, "-m", "tasktune.cpu_info"], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout


@pytest.mark.skipif(allocator_library("tcmalloc") is None, reason="tcmalloc is not installed (make setup)")
def test_the_chosen_allocator_is_mapped_into_the_process():
    assert _settings("tcmalloc").startswith("allocator tcmalloc;")
    assert _settings("system").startswith("allocator system;")

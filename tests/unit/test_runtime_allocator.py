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


@pytest.mark.skipif(allocator_library("tcmalloc") is None, reason="tcmalloc is not installed (make setup)")
def test_a_script_is_rerun_with_it_and_its_children_can_start_without(tmp_path):
    """A benchmark script gets the allocator the CLI gets; the baseline it launches starts with its own."""
    script = tmp_path / "script.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "from tasktune.runtime import loaded_allocator, preload_allocator, without_preloaded_allocator\n"
        "preload_allocator(__file__, sys.argv[1:])\n"
        "child = 'from tasktune.runtime import loaded_allocator; print(loaded_allocator())'\n"
        "done = subprocess.run([sys.executable, '-c', child], env=without_preloaded_allocator(dict(os.environ)),\n"
        "                      capture_output=True, text=True, check=True)\n"
        "print(loaded_allocator(), sys.argv[1:], done.stdout.strip())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("_TASKTUNE") and k != "LD_PRELOAD"}
    env["TASKTUNE_ALLOCATOR"] = "tcmalloc"
    done = subprocess.run([sys.executable, str(script), "--flag"], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "tcmalloc ['--flag'] None"

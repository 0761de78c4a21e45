"""`python -m tasktune.cpu_info`: the allocator, torch threads and OpenMP policy a tasktune process gets here."""

from __future__ import annotations

import os
import sys

from tasktune.runtime import configure_threads, loaded_allocator, preload_allocator

if __name__ == "__main__":
    preload_allocator("tasktune.cpu_info", sys.argv[1:])
    print(f"allocator {loaded_allocator() or 'system'}; threads {configure_threads()}; "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}; GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT')}")

"""Process-wide CPU settings that training and prediction apply on the CPU (measured in benchmarks/).

- The allocator: glibc returns every block over its mmap threshold (at most 32 MiB by default) to the
  kernel on free, so each training step page-faults its large activations afresh (a 50 MB fp32
  tensor: 23 ms to allocate and fill instead of 3 ms). Raising the threshold and the trim threshold
  keeps freed memory in the heap for the next step; the process keeps its peak footprint.
- Threads: at most one intra-op thread per physical core this process may run on (hyper-threads and
  cores outside the affinity mask only slow oneDNN's convolutions down); a lower count chosen by the
  user, or by OMP_NUM_THREADS as torchrun sets it for several processes per machine, is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30

_state = {"allocator": False}


def tune_allocator() -> bool:
    """Keep freed large blocks in the heap (glibc on Linux only); True when the setting is in effect."""
    if _state["allocator"]:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("UNETKIT_KEEP_MALLOC"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    _state["allocator"] = ok
    return ok


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (logical CPUs where topology is unknown)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
            )
        except OSError:
            return len(cpus) or 1
    return len(cores) or 1


def set_threads() -> int:
    """At most one torch intra-op thread per physical core available (never more threads than that; a
    lower count chosen by the user or OMP_NUM_THREADS stays); returns the thread count."""
    if not os.environ.get("OMP_NUM_THREADS"):
        n = physical_cores()
        if torch.get_num_threads() > n:
            torch.set_num_threads(n)
    return torch.get_num_threads()


def tune_cpu() -> None:
    """Both settings above; called by fit() and Predictor when they run on the CPU."""
    tune_allocator()
    set_threads()

"""Peak memory one call adds beyond what is allocated before it: the CUDA caching allocator's
peak on GPU, the process's resident-set high-water mark (``ru_maxrss``) on CPU.

The CPU figure only moves when the allocator maps new pages, so a call that fits in memory the
process already holds (freed by an earlier call, e.g. a warm-up of the same size) reads 0 MiB:
callers show 0 on CPU as "below measurement resolution", not as a measured zero."""

from __future__ import annotations

import ctypes
import resource
from collections.abc import Callable

import torch


def _restart_cpu_high_water() -> None:
    """Best effort (Linux): hand freed heap pages back to the OS, so the call cannot reuse them
    unseen, and restart the high-water mark from the current resident set.  Where either is not
    possible the result is measured over the earlier high-water mark: a lower bound."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM), which ru_maxrss reports
    except OSError:
        pass


def peak_extra_mib(fn: Callable[[], object], device: str) -> float:
    """MiB that ``fn()`` adds at its peak to the memory in use when it is called."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _restart_cpu_high_water()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024

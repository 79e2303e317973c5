"""Timing: CUDA events (via triton.testing.do_bench when present) on GPU, wall clock on CPU.

Each measurement cycles through several input sets so that repeated runs do not just
re-read cached inputs, and reports the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_ms(fn: Callable[[object], object], inputs: Sequence[object], *, device: str, reps: int) -> float:
    """Median milliseconds of ``fn(inputs[k % len(inputs)])`` after one warm-up call per input."""
    for x in inputs:
        fn(x)  # warm-up: lazy init, allocator, autotuning
    if device == "cuda":
        return _cuda_median_ms(fn, inputs, reps)
    times = []
    for k in range(reps):
        x = inputs[k % len(inputs)]
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cuda_median_ms(fn, inputs, reps: int) -> float:
    import torch

    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        counter = iter(range(10**9))
        return float(do_bench(lambda: fn(inputs[next(counter) % len(inputs)]), return_mode="median"))
    times = []
    for k in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(inputs[k % len(inputs)])
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)

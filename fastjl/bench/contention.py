"""``--contention N``: every contender timed again while N busy processes compete for the cores.

A shared machine (a laptop, a CI runner, a login node) rarely gives a job all its cores; how a
CPU path degrades when it does not is part of its speed.  Each busy process spins on plain
integer arithmetic, one core's worth of load, until the timing ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing

# Seconds to wait for the busy processes to start (spawned interpreters import this package).
_START_TIMEOUT_S = 60


def _spin(ready, stop) -> None:
    ready.set()
    while not stop.is_set():
        for _ in range(100_000):
            pass


@contextlib.contextmanager
def busy_processes(count: int):
    """Runs ``count`` busy processes for the duration of the ``with`` block (none for 0)."""
    if count <= 0:
        yield
        return
    # spawn, not fork: a fork would copy torch's thread pools and the caller's memory.
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    readies = [ctx.Event() for _ in range(count)]
    procs = [ctx.Process(target=_spin, args=(ready, stop), daemon=True) for ready in readies]
    try:
        for p in procs:
            p.start()
        for ready in readies:
            if not ready.wait(_START_TIMEOUT_S):
                raise RuntimeError(f"--contention: a busy process did not start within {_START_TIMEOUT_S} s")
        yield
    finally:
        stop.set()
        for p in procs:
            if p.pid is not None:
                p.join(5)
                if p.is_alive():
                    p.terminate()
                    p.join()

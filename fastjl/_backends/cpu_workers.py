"""Block jobs of the torch backend run on CPU worker threads, in a way a busy machine cannot stall.

Why not torch's own parallelism: torch splits every tensor op across its intra-op threads
(OpenMP) and joins them at the op's end. Generating a block of ``P`` is ~130 small integer ops
per Philox slice, so one projection is tens of thousands of joins. When another process takes a
core, every join waits for the descheduled thread while the finished ones spin on the core it
needs. Measured on a 2-core VM at the README's shape (B=32, D=10^6, K=1024, rademacher): 3.3-4.2 s
alone and 9-10 s with one busy competitor, where a fair share of the cores would give 1.5x.

Here whole blocks are the unit of parallelism: ``W`` worker threads each generate and multiply
entire blocks with ``threads // W`` intra-op threads, and take the next block when done, so a
slowed worker delays only its own blocks. Each block's product is its own partial sum, added into
the result strictly in block order by whichever worker completes the run, so the result does not
depend on which worker ran which block, or when.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

Job = TypeVar("Job")

# Blocks of P on CPU hold at most this many bytes whatever the budget: a block is generated,
# multiplied, and dropped while it is still (partly) in cache, and a 64 MiB budget feeds
# several workers.  Measured at the README shape on a 2-core VM with 2 workers: 16 MiB blocks
# 2.5 s, 64 MiB blocks 3.3 s (see bench/NOTES.md, "CPU under contention").
CPU_BLOCK_BYTES = 16 << 20


def block_bytes(device: torch.device, budget: int) -> int:
    """Bytes one block of ``P`` (or of converted input) may take on ``device``."""
    return min(budget, CPU_BLOCK_BYTES) if device.type == "cpu" else budget


def worker_count(device: torch.device, jobs: int, budget: int, per_job: int) -> int:
    """Worker threads for ``jobs`` blocks of at most ``per_job`` bytes each: one per intra-op
    thread torch would use, no more than there are jobs, and no more than fit in ``budget``
    (each worker holds its own block).  1 (run inline) off the CPU."""
    if device.type != "cpu" or jobs < 2:
        return 1
    return max(1, min(torch.get_num_threads(), jobs, budget // max(per_job, 1)))


def run_in_order(
    jobs: Sequence[Job],
    work: Callable[[Job, Any], torch.Tensor],
    consume: Callable[[Job, torch.Tensor], None],
    *,
    workers: int,
    make_state: Callable[[], Any] = lambda: None,
) -> None:
    """Calls ``work(job, state)`` for every job, on ``workers`` threads, and
    ``consume(job, result)`` for each result in the order of ``jobs``.

    ``make_state()`` is called once per worker (its own buffers).  ``consume`` runs under a
    lock, one call at a time, so it may add into shared tensors.  The first exception raised by
    ``work``, ``consume`` or ``make_state`` stops the run and is re-raised here; so is a
    KeyboardInterrupt of the calling thread, once the workers have stopped.
    """
    if workers <= 1 or len(jobs) < 2:
        with torch.no_grad():
            state = make_state()
            for job in jobs:
                consume(job, work(job, state))
        return
    _OrderedRun(jobs, work, consume, make_state, workers).run()


class _OrderedRun:
    def __init__(self, jobs, work, consume, make_state, workers: int):
        self.jobs, self.work, self.consume, self.make_state = list(jobs), work, consume, make_state
        self.workers = min(workers, len(self.jobs))
        self.cond = threading.Condition()
        self.next_claim = 0
        self.next_consume = 0
        self.done: dict[int, torch.Tensor] = {}
        # A worker may run ahead of the next result to consume by this many jobs, so at most
        # that many partial results wait in memory however unevenly the workers progress.
        self.window = 2 * self.workers
        self.error: BaseException | None = None

    def run(self) -> None:
        threads = torch.get_num_threads()
        inference = torch.is_inference_mode_enabled()
        started = threading.Barrier(self.workers + 1)
        per_worker = max(1, threads // self.workers)
        pool = [
            threading.Thread(target=self._worker, args=(per_worker, inference, started), daemon=True)
            for _ in range(self.workers)
        ]
        for t in pool:
            t.start()
        started.wait()
        # torch.set_num_threads in a worker also sets the process-wide default that threads
        # started later inherit; put it back (this thread's own count never changed).
        torch.set_num_threads(threads)
        try:
            for t in pool:
                while t.is_alive():
                    t.join(0.05)
        except BaseException as exc:  # KeyboardInterrupt: stop the workers, then re-raise
            self._fail(exc)
            for t in pool:
                t.join()
            raise
        if self.error is not None:
            raise self.error
        if self.next_consume != len(self.jobs):  # a logic error here must not pass as a result
            raise RuntimeError(f"fastjl internal error: {self.next_consume} of {len(self.jobs)} blocks consumed")

    def _worker(self, threads: int, inference: bool, started: threading.Barrier) -> None:
        # torch sets a thread's intra-op count on its first parallel op from the process-wide
        # default; trigger that first so the count set next is the one that stays.
        torch.get_num_threads()
        torch.set_num_threads(threads)
        started.wait()
        try:
            with torch.inference_mode(inference), torch.no_grad():
                state = self.make_state()
                while (i := self._claim()) is not None:
                    self._deliver(i, self.work(self.jobs[i], state))
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def _claim(self) -> int | None:
        with self.cond:
            while self.error is None and self.next_claim < len(self.jobs):
                if self.next_claim < self.next_consume + self.window:
                    self.next_claim += 1
                    return self.next_claim - 1
                self.cond.wait()
            return None

    def _deliver(self, i: int, result: torch.Tensor) -> None:
        with self.cond:
            self.done[i] = result
            while self.error is None and self.next_consume in self.done:
                j = self.next_consume
                self.consume(self.jobs[j], self.done.pop(j))
                self.next_consume += 1
            self.cond.notify_all()

"""The torch backend's CPU worker threads (fastjl/_backends/cpu_workers.py): results independent
of the number of workers and of timing, errors and interrupts surface, torch's thread settings
left as they were, memory bounded."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

import fastjl
from fastjl._backends import cpu_workers, torch_backend
from tests.helpers import linear_reference, poisoned, reference_projection


@pytest.fixture
def threads():
    """Restores torch's intra-op thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.fixture
def small_blocks(monkeypatch):
    """CPU blocks of 64 KiB (not 16 MiB), so test-sized problems have many blocks and the
    default 64 MiB budget lets every thread run its own worker."""
    monkeypatch.setattr(cpu_workers, "CPU_BLOCK_BYTES", 64 << 10)


def _project(x, proj_dim, kind="rademacher"):
    out = poisoned((x.shape[0], proj_dim))
    return fastjl.project(x, proj_dim, kind=kind, seed=11, offset=3, out=out, backend="torch")


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_result_is_bitwise_the_same_for_any_number_of_threads(kind, threads, small_blocks):
    # D odd, K = 300: 64 KiB blocks of 256 rows x 128 columns (plan_blocks keeps >= 256 rows),
    # so 40 row blocks x 3 column tiles, one of them partial.
    torch.manual_seed(0)
    x = torch.randn(5, 10_001)
    results = {}
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        results[n] = _project(x, 300, kind)
    torch.set_num_threads(threads)
    assert not results[1].isnan().any()
    for n in (2, 3):
        assert torch.equal(results[1], results[n]), f"{n} threads differ from 1 thread"
    ref = reference_projection(x.double(), 300, kind=kind, seed=11, offset=3)
    torch.testing.assert_close(results[2].double(), ref, rtol=1e-5, atol=1e-4)


def test_workers_really_run_in_parallel_jobs(threads, small_blocks, monkeypatch):
    """With 2 threads and several blocks, the blocks run on 2 worker threads, each with one
    intra-op thread (so no tensor op waits on another core)."""
    torch.set_num_threads(2)
    seen = {}
    real = torch_backend.generate_block

    def spy(*args, **kwargs):
        seen[threading.get_ident()] = torch.get_num_threads()
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "generate_block", spy)
    x = torch.randn(3, 5_000)
    _project(x, 256)
    assert len(seen) == 2 and threading.get_ident() not in seen
    assert set(seen.values()) == {1}


def test_thread_settings_are_left_as_they_were(threads, small_blocks):
    torch.set_num_threads(2)
    _project(torch.randn(3, 5_000), 256)
    assert torch.get_num_threads() == 2
    later = []  # a thread started afterwards gets the process-wide default back
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert later == [2]


def test_inference_mode_output(small_blocks):
    """Worker threads do not inherit inference mode; writing into an inference tensor must work."""
    x = torch.randn(3, 5_000)
    with torch.inference_mode():
        out = poisoned((3, 256))
        fastjl.project(x, 256, out=out, backend="torch")
    assert torch.equal(out, fastjl.project(x, 256, backend="torch"))


def test_results_consumed_in_job_order_whatever_finishes_first():
    rng = random.Random(0)
    delays = [rng.random() * 0.01 for _ in range(40)]
    order, outstanding, most = [], [0], [0]
    lock = threading.Lock()

    def work(job, state):
        with lock:
            outstanding[0] += 1
            most[0] = max(most[0], outstanding[0])
        time.sleep(delays[job])
        return torch.tensor(float(job))

    def consume(job, result):
        with lock:
            outstanding[0] -= 1
        assert result.item() == job
        order.append(job)

    cpu_workers.run_in_order(list(range(40)), work, consume, workers=3)
    assert order == list(range(40))
    assert most[0] <= 2 * 3  # no more than the window of results wait in memory


@pytest.mark.parametrize("where", ["work", "consume", "make_state"])
def test_an_error_in_a_worker_is_raised_and_nothing_hangs(where):
    def fail_if(here):
        if where == here:
            raise ValueError(f"boom in {here}")

    def make_state():
        fail_if("make_state")

    def work(job, state):
        if job == 5:
            fail_if("work")
        return torch.zeros(())

    def consume(job, result):
        if job == 7:
            fail_if("consume")

    with pytest.raises(ValueError, match=f"boom in {where}"):
        cpu_workers.run_in_order(list(range(20)), work, consume, workers=2, make_state=make_state)


def test_worker_count_respects_budget_threads_and_device(threads):
    torch.set_num_threads(3)
    cpu = torch.device("cpu")
    assert cpu_workers.worker_count(cpu, jobs=10, budget=64 << 20, per_job=16 << 20) == 3
    assert cpu_workers.worker_count(cpu, jobs=10, budget=32 << 20, per_job=16 << 20) == 2
    assert cpu_workers.worker_count(cpu, jobs=1, budget=64 << 20, per_job=1) == 1
    assert cpu_workers.worker_count(torch.device("meta"), jobs=10, budget=64 << 20, per_job=1) == 1
    assert cpu_workers.block_bytes(cpu, 64 << 20) == cpu_workers.CPU_BLOCK_BYTES
    assert cpu_workers.block_bytes(cpu, 1 << 20) == 1 << 20
    assert cpu_workers.block_bytes(torch.device("cuda"), 64 << 20) == 64 << 20


def test_project_linear_is_the_same_for_any_number_of_threads(threads, small_blocks):
    torch.manual_seed(1)
    a, g = torch.randn(4, 3, 65), torch.randn(4, 3, 33)
    results = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        results.append(fastjl.project_linear(a, g, 384, bias=True, backend="torch"))
    assert not results[0].isnan().any()
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    ref = linear_reference(a.double(), g.double(), 384, bias=True)
    torch.testing.assert_close(results[0].double(), ref, rtol=1e-5, atol=1e-3)


def test_backward_is_the_same_for_any_number_of_threads(threads, small_blocks):
    """The backward pass (fastjl.autograd.project_transpose) runs its row blocks on the workers too."""
    torch.manual_seed(2)
    x = torch.randn(3, 3_001)
    weights = torch.randn(3, 200)
    grads = []
    for n in (1, 2):
        torch.set_num_threads(n)
        leaf = x.clone().requires_grad_()
        (fastjl.project(leaf, 200, backend="torch") * weights).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])
    p = reference_projection(torch.eye(3_001, dtype=torch.float64), 200)  # P itself
    torch.testing.assert_close(grads[0].double(), weights.double() @ p.T, rtol=1e-5, atol=1e-4)

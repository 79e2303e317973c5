"""The sparse kinds' structure cache: hits, misses, eviction and the switch give the same bits."""

import pytest
import torch

import fastjl
from fastjl._backends import sparse_cache, sparse_torch


@pytest.fixture(autouse=True)
def empty_cache():
    sparse_cache.clear()
    yield
    sparse_cache.clear()


@pytest.fixture(params=["csr", "segments"])
def path(request, monkeypatch):
    if request.param == "segments":  # the other devices' product, run on the CPU
        monkeypatch.setattr(sparse_torch, "CSR_DEVICE_TYPES", ())
    return request.param


def project(x, **opts):
    return fastjl.project(x, 97, seed=3, offset=2**40 + 1, **opts)


@pytest.mark.parametrize("opts", [dict(kind="sjlt", sparsity=2), dict(kind="grass", mask_rate=0.4)])
def test_hits_misses_and_no_cache_give_the_same_bits(monkeypatch, path, opts):
    fastjl.set_block_budget(1 << 16)  # several blocks, so several entries
    try:
        x = torch.randn(5, 3001)
        monkeypatch.setenv(sparse_cache.CACHE_ENV_VAR, "0")
        uncached = project(x, **opts)
        assert sparse_cache.cached_bytes() == 0
        monkeypatch.delenv(sparse_cache.CACHE_ENV_VAR)
        miss = project(x, **opts)
        held = sparse_cache.cached_bytes()
        assert held > 0
        hit = project(x, **opts)
        assert sparse_cache.cached_bytes() == held  # nothing rebuilt
        other = project(torch.randn(5, 3001), **opts)  # another x, same matrix: same structures
        assert sparse_cache.cached_bytes() == held
        assert torch.equal(uncached, miss) and torch.equal(miss, hit)
        assert not torch.equal(other, hit)
    finally:
        fastjl.set_block_budget(None)


def test_a_different_matrix_is_never_served_from_the_cache(path):
    x = torch.randn(4, 500)
    a = project(x, kind="sjlt", sparsity=1)
    for changed in [dict(kind="sjlt", sparsity=2), dict(kind="grass", mask_rate=0.5)]:
        assert not torch.equal(project(x, **changed), a)
    b = fastjl.project(x, 97, seed=4, offset=2**40 + 1, kind="sjlt")  # another seed
    c = fastjl.project(x, 97, seed=3, offset=2**40 + 2, kind="sjlt")  # another offset
    d = fastjl.project(x, 98, seed=3, offset=2**40 + 1, kind="sjlt")  # another K
    assert not torch.equal(b, a) and not torch.equal(c, a) and d.shape == (4, 98)
    assert torch.equal(project(x, kind="sjlt", sparsity=1), a)


def test_the_limit_evicts_least_recently_used(monkeypatch):
    one = sparse_cache.nbytes(torch.empty(100, dtype=torch.int64))
    monkeypatch.setenv(sparse_cache.CACHE_ENV_VAR, str(2.5 * one / 2**20))  # room for two
    built = []

    def build(i):
        built.append(i)
        return torch.full((100,), i, dtype=torch.int64)

    for i in (1, 2, 1, 3, 1, 2):  # 3 evicts 2 (1 was used more recently); then 2 evicts 3
        assert int(sparse_cache.get_or_build(("t", i), lambda i=i: build(i))[0]) == i
    assert built == [1, 2, 3, 2]
    assert sparse_cache.cached_bytes() == 2 * one


@pytest.mark.parametrize("value", ["-1", "lots", "nan", str(2**21)])
def test_bad_limit_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(sparse_cache.CACHE_ENV_VAR, value)
    with pytest.raises(ValueError, match=sparse_cache.CACHE_ENV_VAR):
        project(torch.randn(2, 10), kind="sjlt")

"""A bounded cache of the sparse kinds' per-block structures (the sorted nonzeros of a block of P).

Why: a block's structure (its nonzeros generated from the spec, sorted by column: a CSR matrix on
the CPU, a permutation, signs and run lengths elsewhere) depends only on the seed, the block's
global rows, K, s and the mask threshold, never on x.  Building it is most of the cost of a call
(generation ~70 ns and CSR build ~130 ns per row on the CPU; a few dozen kernel launches per block
on a GPU), and TRAK projects many batches with one matrix.  The ``sjlt`` package and dattri keep
their whole matrix's buckets (9 bytes per row) for the same reason.  Here the structures are kept
up to ``FASTJL_SPARSE_CACHE_MB`` MiB (default 512; 0 turns the cache off), least recently used
evicted first, per device; what is cached is exactly what would be rebuilt, so results do not
depend on hits or misses (tested).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

import torch

CACHE_ENV_VAR = "FASTJL_SPARSE_CACHE_MB"
_DEFAULT_MB = 512

_lock = threading.Lock()  # the CPU workers build blocks concurrently
_entries: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
_bytes = 0


def capacity_bytes() -> int:
    """The cache's size limit from ``FASTJL_SPARSE_CACHE_MB`` (read at every call, so tests and
    users can change it at run time); ValueError naming the variable for a bad value."""
    value = os.environ.get(CACHE_ENV_VAR)
    if value is None:
        return _DEFAULT_MB << 20
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not (0 <= mb <= 1 << 20):
        raise ValueError(
            f"environment variable {CACHE_ENV_VAR}={value!r} is invalid: it must be a number of MiB between 0 and "
            f"{1 << 20} (default {_DEFAULT_MB}; 0 turns the cache off); unset it or fix it"
        )
    return int(mb * 2**20)


def nbytes(structure) -> int:
    """Bytes held by a structure: a tensor (sparse CSR included) or a tuple of tensors."""
    if isinstance(structure, tuple):
        return sum(nbytes(part) for part in structure)
    if structure is None:  # an absent part (sjlt has no list of kept rows)
        return 0
    if structure.layout == torch.sparse_csr:
        parts = (structure.crow_indices(), structure.col_indices(), structure.values())
        return sum(p.numel() * p.element_size() for p in parts)
    return structure.numel() * structure.element_size()


def get_or_build(key: tuple, build: Callable[[], object]):
    """The structure for ``key`` from the cache, or ``build()`` (kept if it fits)."""
    global _bytes
    limit = capacity_bytes()
    if limit == 0:
        return build()
    with _lock:
        hit = _entries.get(key)
        if hit is not None:
            _entries.move_to_end(key)
            return hit[0]
    structure = build()  # outside the lock: workers build their blocks in parallel
    size = nbytes(structure)
    if size > limit:
        return structure
    with _lock:
        if key not in _entries:
            _entries[key] = (structure, size)
            _bytes += size
        while _bytes > limit:
            _, (_, evicted) = _entries.popitem(last=False)
            _bytes -= evicted
    return structure


def clear() -> None:
    """Drops every cached structure (frees their memory)."""
    global _bytes
    with _lock:
        _entries.clear()
        _bytes = 0


def cached_bytes() -> int:
    with _lock:
        return _bytes

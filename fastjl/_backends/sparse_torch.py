"""Torch backend of the sparse kinds (sjlt, grass): the reference, the CPU path and the fallback.

``out = x @ P[offset:offset+D, :K]`` block by block of rows: a block's nonzeros are generated
from the spec (:mod:`fastjl.sparse_blocks`, exact bits), its product is a partial sum, and the
partial sums are added into ``out`` in block order (:func:`.torch_backend.sum_blocks_into`), so the
result does not depend on the number of CPU workers.  Nothing is atomic: every output element is
a sum in a fixed order, the same run after run.

* CPU with ``fastjl._C`` built (:mod:`fastjl._backends.sparse_cpu`): the block's nonzeros
  packed as 32-bit words (column | sign bit, ``s`` per used row) and a C++ loop that reads the
  block of ``x`` once, in place, adding each signed element into its columns in row order
  (``csrc/sparse_cpu.cpp``).
* CPU without it: the block's nonzeros, sorted by column (a stable sort, so rows ascend within a
  column), form a ``(K, rows)`` CSR matrix ``Pᵀ``, and ``partial = (Pᵀ @ xᵀ)ᵀ`` with the block of
  ``x`` transposed to ``(rows, B)`` in the compute dtype: every output is a gather over its
  column's rows in row order.  Masked GraSS rows are dropped before the product.
  Both CPU paths sum each output in ascending row order.
* Other devices (CUDA tensors on the torch backend): the block's nonzeros are sorted by column
  (a stable sort), the rows of ``xᵀ`` they touch are gathered in that order and signed, and
  ``segment_reduce`` sums each output column's run: a gather and a segmented sum, ``s`` reads of
  each input element, no atomics (``index_add_`` on CUDA adds with atomics: its sums change from
  run to run).  An earlier version formed the block of ``P`` densely and multiplied with ``mm``:
  ``K / s`` times the work, and at D = 10^7, K = 4096 on an H100 it outran the benchmark's 45 s.

Memory: the converted block of ``x``, the gathered columns and the generator's temporaries stay
within :func:`.cpu_workers.block_bytes`.  Each block's sorted structure (CSR matrix, or sorted
rows, signs and run lengths) is kept for the next call with the same matrix, up to
``FASTJL_SPARSE_CACHE_MB`` (:mod:`.sparse_cache`).
The transpose ``dx = dy @ Pᵀ`` gathers ``dy``'s columns for a block of rows at a time.
"""

from __future__ import annotations

import warnings

import torch

from ..sparse_blocks import grass_keep_block, sjlt_block
from . import sparse_cache, sparse_cpu
from .cpu_workers import block_bytes
from .torch_backend import block_budget, sum_blocks_into

NAME = "torch"
# Devices whose products go through the CSR gather (torch's sparse CSR product on CUDA is cuSPARSE,
# whose run-to-run determinism is not documented; dense blocks are).  Tests also set it to () to
# run the dense path on the CPU.
CSR_DEVICE_TYPES = ("cpu",)
# Philox calls of one block at most: on the CPU the generator's int64 temporaries stay in cache;
# on a GPU a block is a few dozen kernel launches, so blocks are as large as the budget allows.
_MAX_NONZEROS_PER_BLOCK = {"cpu": 1 << 17}
_MAX_NONZEROS_PER_BLOCK_ELSEWHERE = 1 << 24


def availability(device: torch.device) -> str | None:
    return None  # torch runs wherever the tensor lives


def _block_rows(batch: int, dim: int, per_row_bytes: int, sparsity: int, per_block: int, device) -> int:
    rows = per_block // max(per_row_bytes, 1)
    most = _MAX_NONZEROS_PER_BLOCK.get(torch.device(device).type, _MAX_NONZEROS_PER_BLOCK_ELSEWHERE)
    return max(1, min(dim, rows, most // sparsity))


def _nonzeros(seed, row0, nrows, proj_dim, sparsity, threshold, dtype, device):
    """``(local row, column, value)`` of the block's nonzeros, flat, masked rows dropped."""
    columns, negative = sjlt_block(seed, row0, nrows, proj_dim, sparsity, device)
    local = torch.arange(nrows, dtype=torch.int64, device=device)[:, None].expand(nrows, sparsity)
    values = 1 - 2 * negative.to(dtype)
    if threshold is None:
        return local.reshape(-1), columns.reshape(-1), values.reshape(-1)
    kept = grass_keep_block(seed, row0, nrows, threshold, device)
    return local[kept].reshape(-1), columns[kept].reshape(-1), values[kept].reshape(-1)


def _csr_transposed(local, columns, values, nrows, proj_dim) -> torch.Tensor:
    """The block's ``Pᵀ`` ``(K, rows)`` as CSR: nonzeros sorted by column, rows ascending within one."""
    order = torch.argsort(columns, stable=True)
    counts = torch.bincount(columns, minlength=proj_dim)
    crow = torch.zeros(proj_dim + 1, dtype=torch.int64, device=columns.device)
    torch.cumsum(counts, 0, out=crow[1:])
    # Valid by construction (sorted, in range): no invariant checks, and none of their warning.
    return torch.sparse_csr_tensor(crow, local[order], values[order], size=(proj_dim, nrows), check_invariants=False)


_csr_warning_spent = False


def _spend_csr_beta_warning() -> None:
    """torch warns once per process, from C++, that sparse CSR tensors are "in beta" when the
    first one is built; build that one here, in the calling thread with the warning ignored,
    rather than show users a warning about an internal detail (catch_warnings is not
    thread-safe, so not in the workers)."""
    global _csr_warning_spent
    if not _csr_warning_spent:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = torch.ones(1, dtype=torch.int64)
            torch.sparse_csr_tensor(torch.tensor([0, 1]), one - 1, one.float(), size=(1, 1), check_invariants=False)
        _csr_warning_spent = True


def project_sparse(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> None:
    """Writes ``x @ P`` (unscaled entries ±1) into ``out`` ``(B, K)`` (float32 or float64);
    ``threshold`` is GraSS's mask threshold, None for sjlt."""
    batch, dim = x.shape
    proj_dim = out.shape[1]
    compute = out.dtype
    itemsize = out.element_size()
    device = x.device
    per_block = block_bytes(device, block_budget())
    packed_path = device.type == "cpu" and sparse_cpu.serves(x, out)
    sparse_path = not packed_path and device.type in CSR_DEVICE_TYPES
    path = "packed" if packed_path else "csr" if sparse_path else "segments"
    # packed: a copy of the block of x only if its columns are strided; CSR: the block of x
    # transposed, in the compute dtype; segments: that too, its gathered rows (s per row) and
    # the sort's int64 keys, permutation and lengths.
    per_row = batch * itemsize if packed_path or sparse_path else batch * itemsize + sparsity * (batch * itemsize + 40)
    rows = _block_rows(batch, dim, per_row, sparsity, per_block, device)
    if sparse_path:
        _spend_csr_beta_warning()

    def structure(r0, r1):
        """The block's sorted nonzeros (see sparse_cache: the part of the work that x does not change)."""
        if packed_path:
            return sparse_cpu.packed_block(seed, offset + r0, r1 - r0, proj_dim, sparsity, threshold)
        local, columns, values = _nonzeros(seed, offset + r0, r1 - r0, proj_dim, sparsity, threshold, compute, device)
        if sparse_path:
            return _csr_transposed(local, columns, values, r1 - r0, proj_dim)
        order = torch.argsort(columns, stable=True)  # rows ascend within a column
        return local[order], values[order], torch.bincount(columns, minlength=proj_dim)

    def work(job, _state) -> torch.Tensor:
        r0, r1 = job.rows
        key = ("sparse", str(device), compute, seed, offset + r0, r1 - r0, proj_dim, sparsity, threshold, path)
        block = sparse_cache.get_or_build(key, lambda: structure(r0, r1))
        if packed_path:
            return sparse_cpu.block_product(x[:, r0:r1], block, proj_dim, sparsity, compute)
        # (rows, B): the CSR product's fast layout, and for the segments one contiguous run of B
        # values per gathered row (coalesced on a GPU) instead of B scattered ones.
        xt = x[:, r0:r1].t().to(compute).contiguous()
        if sparse_path:
            return torch.sparse.mm(block, xt).t()
        rows_sorted, values_sorted, lengths = block
        gathered = xt.index_select(0, rows_sorted) * values_sorted[:, None]
        return torch.segment_reduce(gathered, "sum", lengths=lengths, axis=0).t()

    # One column tile (all K columns), row blocks summed in order on the CPU workers.
    sum_blocks_into(out, proj_dim, [(r0, min(dim, r0 + rows)) for r0 in range(0, dim, rows)], work)


def transpose_sparse(
    dy: torch.Tensor, dim: int, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> torch.Tensor:
    """``dy @ P[offset:offset+dim, :K]ᵀ`` ``(B, dim)`` in dy's dtype (float32 or float64) and device:
    ``dx[:, i] = Σ_t sign_t(i) dy[:, column_t(i)]`` (times GraSS's mask), a block of rows at a time."""
    batch, proj_dim = dy.shape
    dx = torch.empty((batch, dim), dtype=dy.dtype, device=dy.device)
    per_row = batch * sparsity * dy.element_size()
    rows = _block_rows(batch, dim, per_row, sparsity, block_bytes(dy.device, block_budget()), dy.device)
    for r0 in range(0, dim, rows):
        n = min(dim, r0 + rows) - r0
        columns, negative = sjlt_block(seed, offset + r0, n, proj_dim, sparsity, dy.device)
        values = 1 - 2 * negative.to(dy.dtype)
        if threshold is not None:
            values *= grass_keep_block(seed, offset + r0, n, threshold, dy.device)[:, None]
        gathered = dy.index_select(1, columns.reshape(-1)).view(batch, n, sparsity)
        dx[:, r0 : r0 + n] = (gathered * values).sum(2)
    return dx

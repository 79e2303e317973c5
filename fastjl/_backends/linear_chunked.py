"""``project_linear`` on a GPU for sequences (T > 1): bounded chunks of the per-example gradient
formed by ``bmm`` on the tensor cores, each projected by the backend's ``project`` kernel.

Why: the fused kernels form each tile of ``G_b = Σ_t g_bt a_btᵀ`` in their producer, a T-long
scalar reduction per element, redone for every K tile.  Measured on an H100 (2026-11-27,
``bench/results/gpu-h100-20261127-run3``): B=8, T=128, 768×3072, K=2048 took 221.7 ms fused
against 5.7 ms for materializing G and projecting it.  For T = 1 a tile of ``G`` is one product
per element and the fused kernels write nothing to memory, so they stay on that path.

The chunks are whole rows of ``G`` (output features ``o0:o1``, all of ``d_in``), so each chunk is
a contiguous run of the spec's rows starting at ``offset + o0·d_in``; the bias gradient ``Σ_t
g_bt`` is one more chunk at ``offset + d_out·d_in``.  Chunks are summed into ``out`` in chunk
order (no atomics: run to run the same bits).  ``G`` is formed in float32 (the fused kernels'
precision: their tiles are float32 too) from float32 copies of ``a`` and ``g``; at most
``CHUNK_BYTES`` of it exists at a time, whatever ``d_out·d_in``.
"""

from __future__ import annotations

import torch

# Sequences longer than this go through chunks (T = 1: the fused kernel, see above).
FUSED_MAX_TOKENS = 1
# Bytes of float32 gradient rows alive at once (B · rows · d_in · 4).
CHUNK_BYTES = 256 << 20


def use_chunks(tokens: int, device: torch.device) -> bool:
    """Whether ``project_linear`` on ``device`` with ``tokens`` positions takes the chunked path."""
    return device.type == "cuda" and tokens > FUSED_MAX_TOKENS


def gradient_blocks(a: torch.Tensor, g: torch.Tensor, budget_bytes: int):
    """Yields ``(b0, b1, o0, block)``: ``block`` ``(b1 - b0, rows · d_in)`` holds rows ``o0 ..
    o0 + rows - 1`` of ``G_b = Σ_t g_bt a_btᵀ`` for examples ``b0 .. b1 - 1``, formed by one
    ``bmm`` in a's dtype, at most ``budget_bytes`` of it (whole output rows; examples are split
    only when one row of every example does not fit).  Rows of a block are the contiguous rows
    ``offset + o0 · d_in ...`` of P.  Shared by this module and trak_core's sparse hooks."""
    batch, _, d_in = a.shape
    d_out = g.shape[2]
    entries = max(1, budget_bytes // a.element_size())
    examples = max(1, min(batch, entries // d_in))
    rows = max(1, min(d_out, entries // (examples * d_in)))
    for b0 in range(0, batch, examples):
        b1 = min(batch, b0 + examples)
        g_t = g[b0:b1].transpose(1, 2)
        for o0 in range(0, d_out, rows):
            block = torch.bmm(g_t[:, o0 : o0 + rows], a[b0:b1])
            yield b0, b1, o0, block.reshape(b1 - b0, -1)


def project_linear(project, a, g, out, *, seed: int, kind: str, offset: int, bias: bool) -> None:
    """Writes the projection of the Linear layer's per-example gradients into ``out`` ``(B, K)``
    with ``project(x, out, seed=, kind=, offset=)`` (a backend's dense kernel) on chunks of ``G``.
    Arguments as the backends' ``project_linear``."""
    d_in, d_out = a.shape[2], g.shape[2]
    a32, g32 = a.float(), g.float()
    partial = None  # the second chunk onwards is projected here, then added to out
    for b0, b1, o0, grad in gradient_blocks(a32, g32, CHUNK_BYTES):
        target = out[b0:b1]
        partial = _project_into(project, grad, target, partial, seed, kind, offset + o0 * d_in, first=o0 == 0)
    if bias:
        _project_into(project, g32.sum(1), out, partial, seed, kind, offset + d_out * d_in, first=False)


def _project_into(project, x, out, partial, seed, kind, offset, *, first):
    """Projects ``x`` into ``out`` (``first``) or into ``partial`` then adds it to ``out``;
    returns the partial buffer (reused while its shape fits)."""
    if first:
        project(x, out, seed=seed, kind=kind, offset=offset)
        return partial
    if partial is None or partial.shape != out.shape:
        partial = torch.empty(out.shape, dtype=torch.float32, device=out.device)
    project(x, partial, seed=seed, kind=kind, offset=offset)
    out.add_(partial)
    return partial

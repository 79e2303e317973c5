"""Shared test utilities: float64 references and poisoned outputs."""

import torch

from fastjl.spec import matrix_block


def reference_projection(x, proj_dim, seed=0, kind="rademacher", offset=0):
    """``x @ P`` in float64 with ``P`` from the entry-wise spec (small shapes only)."""
    dim = x.shape[1]
    p = matrix_block(seed, kind, range(offset, offset + dim), range(proj_dim), device=x.device)
    return x.double() @ p


def poisoned(shape, dtype=torch.float32, device="cpu"):
    """An output buffer full of NaN, so elements a backend forgets to write show up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def relative_error(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# Relative error (Frobenius) of a float32-accumulated projection vs the float64 reference,
# by input dtype: float32 inputs only suffer accumulation rounding; fp16/bf16 inputs are
# exact in float32, so the comparison is against the reference of the rounded input.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float64: 1e-12}


def materialized_linear_gradient(a, g, bias=False):
    """Per-example gradients of a Linear layer, formed explicitly in float64: ``(B, d_out*d_in [+ d_out])``
    from inputs ``a`` ``(B, [T,] d_in)`` and output gradients ``g`` ``(B, [T,] d_out)``."""
    if a.dim() == 2:
        a, g = a[:, None], g[:, None]
    grads = torch.einsum("bto,bti->boi", g.double(), a.double()).reshape(a.shape[0], -1)
    return torch.cat([grads, g.double().sum(1)], dim=1) if bias else grads

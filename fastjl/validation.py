"""Argument checks shared by every public entry point.

All validation happens here, in Python, before any backend runs: backends (and the compiled
kernels behind them) receive arguments that are already known to be in range.
Errors name the argument and the limit.
"""

from __future__ import annotations

import numpy as np
import torch

from .spec import MAX_PROJ_DIM, MAX_ROWS, check_int, check_kind, check_seed

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIXTEEN_BIT = (torch.float16, torch.bfloat16)  # the input dtypes fed to the MMAs as they are
# float64 is accepted by the torch backend only, as an exact reference (output float64).
REFERENCE_DTYPE = torch.float64
SCALES = (None, "jl")


def check_indices(inds, name: str = "inds") -> np.ndarray:
    """``inds`` (a sequence, numpy array or tensor of integers) as a 1-D int64 numpy array.

    Refuses floats (even integral-valued: ``[0.5, 1.5]`` is not rows 0, 1) and bools (a mask
    is not a list of indices) with a TypeError, instead of letting numpy truncate them.
    """
    if isinstance(inds, torch.Tensor):
        if inds.layout != torch.strided or inds.device.type == "meta":
            raise TypeError(f"{name} must be a dense tensor with values, got layout {inds.layout} on {inds.device}")
        array = inds.detach().cpu().numpy()
    else:
        array = np.asarray(inds)
    if array.dtype == np.bool_:
        raise TypeError(f"{name} must hold integer indices, got bools (a mask? use mask.nonzero())")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices, got dtype {array.dtype}")
    return array.astype(np.int64).reshape(-1)


def check_tensor_kind(t: torch.Tensor, name: str) -> None:
    """Refuses tensors without ordinary memory: meta tensors (no data) and sparse/mkldnn layouts."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (device meta: shape only, no data); fastjl needs real data")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}; call .to_dense() first")


def _byte_range(t: torch.Tensor) -> tuple[int, int, int]:
    """``(storage pointer, first byte, one past the last byte)`` that ``t`` can touch."""
    size = t.element_size()
    start = t.storage_offset() * size
    extent = (sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1) * size
    return t.untyped_storage().data_ptr(), start, start + extent


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory ``a`` and ``b`` can touch intersects (conservative: the byte ranges
    from each one's first to last element, within the same storage)."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    pa, a0, a1 = _byte_range(a)
    pb, b0, b1 = _byte_range(b)
    return pa == pb and a0 < b1 and b0 < a1


def check_proj_dim(proj_dim) -> int:
    return check_int(proj_dim, "proj_dim", low=1, high=MAX_PROJ_DIM - 1)


def check_scale(scale):
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def check_dtype(t: torch.Tensor, name: str, *, allow_float64: bool) -> None:
    allowed = INPUT_DTYPES + ((REFERENCE_DTYPE,) if allow_float64 else ())
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names}; got {t.dtype}")


def check_all_finite(t: torch.Tensor, name: str) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf (check_finite=True)")


def check_input(x, *, allow_float64: bool, check_finite: bool = False) -> torch.Tensor:
    """``x`` must be a 2-D floating tensor ``(B, D)`` with D >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, D), got {type(x).__name__}")
    check_tensor_kind(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (B, D), got shape {tuple(x.shape)}")
    check_dtype(x, "x", allow_float64=allow_float64)
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one column (D >= 1), got shape {tuple(x.shape)}")
    if check_finite:
        check_all_finite(x, "x")
    return x


def check_linear_inputs(a, g, *, allow_float64: bool, check_finite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear layer's inputs ``a`` and output gradients ``g``, returned as ``(B, T, d_in)``
    and ``(B, T, d_out)`` views: both must be 2-D (T = 1) or both 3-D, with the same B, T,
    dtype and device."""
    for name, t, width in (("a", a, "d_in"), ("g", g, "d_out")):
        if not isinstance(t, torch.Tensor):
            kind = type(t).__name__
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, {width}) or (B, T, {width}), got {kind}")
        check_tensor_kind(t, name)
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must be 2-D (B, {width}) or 3-D (B, T, {width}), got shape {tuple(t.shape)}")
        check_dtype(t, name, allow_float64=allow_float64)
        if t.shape[-1] < 1:
            raise ValueError(f"{name} must have {width} >= 1, got shape {tuple(t.shape)}")
    if a.dim() != g.dim():
        raise ValueError(
            f"a and g must have the same rank (both (B, d) or both (B, T, d)), got shapes "
            f"{tuple(a.shape)} and {tuple(g.shape)}"
        )
    if a.shape[0] != g.shape[0]:
        raise ValueError(f"a and g must have the same batch size B, got {a.shape[0]} and {g.shape[0]}")
    if a.dim() == 3 and a.shape[1] != g.shape[1]:
        raise ValueError(f"a and g must have the same number of tokens T, got {a.shape[1]} and {g.shape[1]}")
    if a.dtype != g.dtype:
        raise TypeError(f"a and g must have the same dtype, got {a.dtype} and {g.dtype}")
    if a.device != g.device:
        raise ValueError(f"a is on device {a.device} but g is on device {g.device}; they must match")
    if check_finite:
        check_all_finite(a, "a")
        check_all_finite(g, "g")
    if a.dim() == 2:
        a, g = a[:, None, :], g[:, None, :]
    return a, g


def check_offset(offset, num_rows: int) -> int:
    offset = check_int(offset, "offset", low=0, high=MAX_ROWS - 1)
    if offset + num_rows > MAX_ROWS:
        raise ValueError(f"offset + D must be at most 2^48 = {MAX_ROWS} (rows of P), got offset={offset}, D={num_rows}")
    return offset


def output_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == REFERENCE_DTYPE else torch.float32


def check_out(out, x: torch.Tensor, proj_dim: int, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Checks a caller-provided output, or allocates one; ``(B, K)`` float32 on x's device
    (``x`` is any tensor whose first dimension is B and whose dtype is the input's).

    ``out`` must not share memory with any of ``inputs`` (``{name: tensor}``, default
    ``{"x": x}``: backends read the input while writing ``out``), and no element of ``out``
    may be written twice (a zero stride in a dimension of size > 1, e.g. ``expand``)."""
    shape = (x.shape[0], proj_dim)
    dtype = output_dtype(x)
    if out is None:
        return torch.empty(shape, dtype=dtype, device=x.device)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape (B, proj_dim) = {shape}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype} for x of dtype {x.dtype}, got {out.dtype}")
    check_tensor_kind(out, "out")
    if out.device != x.device:
        raise ValueError(f"out is on device {out.device} but x is on device {x.device}; they must match")
    for n, s in zip(out.shape, out.stride()):
        if n > 1 and s == 0:
            raise ValueError(
                f"out has stride 0 in a dimension of size {n} (strides {tuple(out.stride())}: an expanded "
                "tensor), so several results would land in one element; pass a tensor with its own memory "
                "(e.g. out.contiguous() or torch.empty)"
            )
    for name, t in (inputs if inputs is not None else {"x": x}).items():
        if overlaps(out, t):
            raise ValueError(
                f"out shares memory with {name} (they overlap); the backends read {name} while writing out, "
                "so the result would be garbage: pass a separate out tensor (or out=None)"
            )
    return out


__all__ = [
    "INPUT_DTYPES",
    "check_indices",
    "check_input",
    "check_linear_inputs",
    "check_int",
    "check_kind",
    "check_offset",
    "check_out",
    "check_proj_dim",
    "check_scale",
    "check_tensor_kind",
    "check_seed",
    "output_dtype",
    "overlaps",
]

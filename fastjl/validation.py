"""Argument checks shared by every public entry point.

All validation happens here, in Python, before any backend runs: backends (and the compiled
kernels behind them) receive arguments that are already known to be in range.
Errors name the argument and the limit.
"""

from __future__ import annotations

import torch

from .spec import MAX_PROJ_DIM, MAX_ROWS, check_int, check_kind, check_seed

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float64 is accepted by the torch backend only, as an exact reference (output float64).
REFERENCE_DTYPE = torch.float64
SCALES = (None, "jl")


def check_proj_dim(proj_dim) -> int:
    return check_int(proj_dim, "proj_dim", low=1, high=MAX_PROJ_DIM - 1)


def check_scale(scale):
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def check_input(x, *, allow_float64: bool, check_finite: bool = False) -> torch.Tensor:
    """``x`` must be a 2-D floating tensor ``(B, D)`` with D >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (B, D), got shape {tuple(x.shape)}")
    allowed = INPUT_DTYPES + ((REFERENCE_DTYPE,) if allow_float64 else ())
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"x must have dtype {names}; got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"x must have at least one column (D >= 1), got shape {tuple(x.shape)}")
    if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf (check_finite=True)")
    return x


def check_offset(offset, num_rows: int) -> int:
    offset = check_int(offset, "offset", low=0, high=MAX_ROWS - 1)
    if offset + num_rows > MAX_ROWS:
        raise ValueError(f"offset + D must be at most 2^48 = {MAX_ROWS} (rows of P), got offset={offset}, D={num_rows}")
    return offset


def output_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == REFERENCE_DTYPE else torch.float32


def check_out(out, x: torch.Tensor, proj_dim: int) -> torch.Tensor:
    """Checks a caller-provided output, or allocates one; ``(B, K)`` float32 on x's device."""
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
    if out.device != x.device:
        raise ValueError(f"out is on device {out.device} but x is on device {x.device}; they must match")
    return out


__all__ = [
    "INPUT_DTYPES",
    "check_input",
    "check_int",
    "check_kind",
    "check_offset",
    "check_out",
    "check_proj_dim",
    "check_scale",
    "check_seed",
    "output_dtype",
]

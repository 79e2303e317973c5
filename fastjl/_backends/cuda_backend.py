"""CUDA backend: tensor-core kernels compiled into ``fastjl._C`` (issue 4).

``fastjl._C`` takes raw pointers, sizes, dtype codes and the stream handle, so this wrapper
is where torch tensors become those integers.  Until the projection kernel lands this module
only reports why the backend is unavailable.
"""

from __future__ import annotations

import torch

from .._extension import _C, IMPORT_ERROR

NAME = "cuda"


def availability(device: torch.device) -> str | None:
    if _C is None:
        return IMPORT_ERROR
    if not hasattr(_C, "project"):
        return "fastjl._C has no projection kernel in this version (only the host RNG code)"
    if device.type != "cuda":
        return f"needs a CUDA tensor, got a tensor on {device}"
    return None


def project(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int) -> None:
    raise RuntimeError(f"fastjl cuda backend: {availability(x.device)}")

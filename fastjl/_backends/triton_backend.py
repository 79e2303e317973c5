"""Triton backend: fused kernel generating tiles of ``P`` in registers (issue 3).

Until the kernel lands this module only reports why the backend is unavailable.
"""

from __future__ import annotations

import importlib.util

import torch

NAME = "triton"


def availability(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return "the Triton projection kernel is not implemented in this version"


def project(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int) -> None:
    raise RuntimeError(f"fastjl triton backend: {availability(x.device)}")

"""Backend registry and selection (docs/design.md, API and Backends).

Each backend module provides ``NAME``, ``availability(device) -> reason or None`` and the
ops it implements, taking validated arguments and overwriting every element of ``out``:
``project(x, out, *, seed, kind, offset)`` (all backends) and
``project_linear(a, g, out, *, seed, kind, offset, bias)``.  A module may also define
``op_availability(op) -> reason or None`` for ops that depend on how it was built.
The sparse kinds' ops (``project_sparse``, ``transpose_sparse``) live in a separate module per
backend that has them (:data:`SPARSE_MODULES`); the others do not implement them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..validation import SIXTEEN_BIT
from . import cuda_backend, sparse_torch, torch_backend, triton_backend

_BACKENDS = {m.NAME: m for m in (cuda_backend, triton_backend, torch_backend)}
SPARSE_OPS = ("project_sparse", "transpose_sparse")
SPARSE_MODULES = {m.NAME: m for m in (sparse_torch,)}
BACKEND_NAMES = tuple(_BACKENDS)
# Preference of backend="auto" on CUDA tensors; CPU tensors always get torch.  By input dtype,
# from the H100 measurements of 2026-11-27 (bench/results/gpu-h100-20261127-run3, -run4):
# 16-bit inputs give both kernels the same precision, and Triton was 1.7-2x faster than the
# CUDA kernel at every rademacher shape (and for project_linear); float32 inputs keep the CUDA
# kernel first for precision (it carries x as two bf16 halves, ~1e-5 at D = 10^6, where
# Triton's default tf32 dot measured 4e-4 to 8e-4).
AUTO_ORDER_CUDA = ("cuda", "triton", "torch")
# The sparse kinds on CUDA tensors, from the H100 run of 2026-11-27 (gpu-h100-20261127-run5):
# B = 32, D = 10^7, K = 4096, fp32, s = 1: CUDA kernel 0.91 ms, Triton 2.10 ms, torch 21.8 ms
# (bf16, s = 4: 2.58 / 7.60 / 61.1 ms); all three agree with the spec (GPU tests of that run).
AUTO_ORDER_SPARSE_CUDA = ("cuda", "triton", "torch")
AUTO_ORDER_CUDA_16BIT = ("triton", "cuda", "torch")
# Except where cuda_backend.measured_faster holds (rademacher projections of 16-bit x with B > 64
# on compute capability 9.0): there the CUDA kernel (wgmma, cuda_backend.use_wgmma) measured
# 1.18-1.21x Triton's and even the mma.sync kernel 1.05-1.07x (H100, run 7: bf16 and fp16, B =
# 128 and 512, K = 2048 and 8192).  Triton stays first for B <= 64 (B = 32: 1.13-1.18x faster
# than CUDA), for gaussian (1.15x faster at B >= 128), for project_linear, and on other GPUs
# (not measured since the CUDA kernel's rework).
ENV_VAR = "FASTJL_BACKEND"


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why it is unavailable, or "ok"

    def __str__(self) -> str:
        return f"{self.name:7s} {'available' if self.available else 'unavailable'}: {self.reason}"


class BackendTable(dict):
    """``{name: BackendStatus}`` that prints as one line per backend."""

    def __repr__(self) -> str:
        return "\n".join(str(s) for s in self.values())


def _check_name(name, what: str) -> str:
    if name != "auto" and name not in _BACKENDS:
        valid = ", ".join(("auto",) + BACKEND_NAMES)
        raise ValueError(f"{what} must be one of {valid}; got {name!r}")
    return name


def backends(device: torch.device | str | None = None) -> BackendTable:
    """Which backends work for tensors on ``device`` (default: the GPU if any, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    status = BackendTable()
    for name, module in _BACKENDS.items():
        reason = module.availability(device)
        status[name] = BackendStatus(name, reason is None, reason or "ok")
    return status


def _module(name: str, op: str):
    """The module of backend ``name`` that holds ``op``."""
    return SPARSE_MODULES.get(name, _BACKENDS[name]) if op in SPARSE_OPS else _BACKENDS[name]


def _unavailable(module, device: torch.device, op: str) -> str | None:
    """Why ``module`` cannot run ``op`` on ``device``, or None."""
    reason = module.availability(device)
    if reason is None and not hasattr(module, op):
        reason = f"does not implement {op}"
    if reason is None and hasattr(module, "op_availability"):
        reason = module.op_availability(op)
    return reason


def auto_order(
    device: torch.device,
    dtype: torch.dtype | None = None,
    op: str = "project",
    batch: int | None = None,
    kind: str | None = None,
) -> tuple[str, ...]:
    """The backends "auto" tries, in order, for ``op`` on ``batch`` rows of ``dtype`` and a
    matrix of ``kind`` on ``device`` (see AUTO_ORDER_CUDA and AUTO_ORDER_CUDA_16BIT)."""
    if device.type != "cuda":
        return ("torch",)
    if op in SPARSE_OPS:
        return AUTO_ORDER_SPARSE_CUDA
    if dtype not in SIXTEEN_BIT:
        return AUTO_ORDER_CUDA
    cuda_first = (
        op == "project"
        and batch is not None
        and kind is not None
        and cuda_backend.measured_faster(kind, dtype, batch, device)
    )
    return AUTO_ORDER_CUDA if cuda_first else AUTO_ORDER_CUDA_16BIT


def select(
    backend: str,
    device: torch.device,
    op: str = "project",
    dtype: torch.dtype | None = None,
    batch: int | None = None,
    kind: str | None = None,
):
    """The backend module for ``backend`` ("auto" or a name) that runs ``op`` on ``device`` for
    ``batch`` rows of ``dtype`` and a matrix of ``kind`` (which order "auto"'s preference on
    CUDA tensors; see :func:`auto_order`).

    ``FASTJL_BACKEND`` overrides "auto".  An explicitly requested backend that cannot run
    raises RuntimeError with the reason; "auto" never picks an unavailable one.
    """
    _check_name(backend, "backend")
    if backend == "auto":
        backend = _check_name(os.environ.get(ENV_VAR, "auto"), f"environment variable {ENV_VAR}")
    if backend == "auto":
        order = auto_order(device, dtype, op, batch, kind)
        for name in order:
            if _unavailable(_module(name, op), device, op) is None:
                return _module(name, op)
        raise RuntimeError(f"no fastjl backend can run on {device}")  # torch always can
    module = _module(backend, op)
    reason = _unavailable(module, device, op)
    if reason is not None:
        raise RuntimeError(f"fastjl backend {backend!r} cannot run {op} on {device}: {reason}")
    return module

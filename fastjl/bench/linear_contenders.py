"""What ``--op linear`` compares: projecting a Linear layer's per-example gradients from its
inputs ``a (B, T, d_in)`` and output gradients ``g (B, T, d_out)``.

* ``fused-<backend>``: ``fastjl.project_linear`` (dense kind), never forming the gradients;
* ``materialize+project-<backend>``: forms ``G`` (``B x d_out·d_in``) with an einsum, then
  ``fastjl.project`` with the same backend; forming G is timed, it is the point;
* ``kronecker``: ``fastjl.project_linear(kind="kronecker")`` at the same K (a different,
  structured projection: torch matrix products whatever the backend).

As in :mod:`fastjl.bench.contenders`, ``setup(shape, device)`` returns ``run(a, g) -> y`` or
raises ``Unavailable``.  Fused and materialize+project compute the same y, which
:func:`check_agreement` asserts before anything is timed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import fastjl
from fastjl import _backends

from .contenders import Unavailable


@dataclass(frozen=True)
class LinearShape:
    batch: int
    tokens: int
    d_in: int
    d_out: int
    proj_dim: int
    kind: str  # the dense kind of fused and materialize+project
    dtype: torch.dtype

    @property
    def dim(self) -> int:
        """Length of one flattened per-example weight gradient."""
        return self.d_out * self.d_in


class Disagreement(AssertionError):
    """Fused and materialize+project gave different projections: nothing is timed."""


def _backend_ready(backend: str, device: str, op: str) -> None:
    try:
        _backends.select(backend, torch.device(device), op=op)
    except RuntimeError as exc:
        raise Unavailable(str(exc).split(": ", 1)[-1]) from None


def fused(backend: str):
    def setup(shape: LinearShape, device: str):
        _backend_ready(backend, device, "project_linear")
        out = torch.empty(shape.batch, shape.proj_dim, device=device)
        return lambda a, g: fastjl.project_linear(a, g, shape.proj_dim, kind=shape.kind, out=out, backend=backend)

    return setup


def materialize_project(backend: str):
    def setup(shape: LinearShape, device: str):
        _backend_ready(backend, device, "project")
        out = torch.empty(shape.batch, shape.proj_dim, device=device)

        def run(a, g):
            grads = torch.einsum("bto,bti->boi", g, a).reshape(a.shape[0], -1)
            return fastjl.project(grads, shape.proj_dim, kind=shape.kind, out=out, backend=backend)

        return run

    return setup


def kronecker(shape: LinearShape, device: str):
    out = torch.empty(shape.batch, shape.proj_dim, device=device)
    return lambda a, g: fastjl.project_linear(a, g, shape.proj_dim, kind="kronecker", out=out)


LINEAR_CONTENDERS = {}
for _name in _backends.BACKEND_NAMES:
    LINEAR_CONTENDERS[f"fused-{_name}"] = fused(_name)
    LINEAR_CONTENDERS[f"materialize+project-{_name}"] = materialize_project(_name)
LINEAR_CONTENDERS["kronecker"] = kronecker


def default_rtol(dtype: torch.dtype, device: str) -> float:
    """Agreement required of fused vs materialize+project: float32 on CPU computes both exactly
    in float32; on GPU float32 goes through TF32 dots, and 16-bit inputs make the einsum round
    G to 16 bits where the fused kernels keep it in float32."""
    if dtype != torch.float32:
        return 2e-2
    return 1e-5 if device == "cpu" else 1e-3


def relative_difference(y: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(y - reference) / torch.linalg.vector_norm(reference))


def check_agreement(runs: dict, a, g, rtol: float) -> dict[str, float]:
    """``{backend: relative difference}`` of fused vs materialize+project for every backend
    where both run; raises :class:`Disagreement` above ``rtol``."""
    diffs = {}
    for name in _backends.BACKEND_NAMES:
        pair = runs.get(f"fused-{name}"), runs.get(f"materialize+project-{name}")
        if None in pair:
            continue
        y_fused, y_materialized = (run(a, g).double() for run in pair)
        diffs[name] = relative_difference(y_fused, y_materialized)
        if not diffs[name] <= rtol:  # also catches NaN
            raise Disagreement(
                f"fused-{name} and materialize+project-{name} differ by {diffs[name]:.2e} relative "
                f"(allowed {rtol:.0e}) at B={a.shape[0]} T={a.shape[1]} d_in={a.shape[2]} d_out={g.shape[2]}"
            )
    return diffs

"""Shared by the host adapters: importing a host, naming kinds, projecting per-parameter grads."""

from __future__ import annotations

import importlib
import operator
from collections.abc import Mapping

import torch

from ..projector import project_gradients
from ..spec import MAX_SEED


def require(module: str, pip_name: str, integration: str):
    """Imports the host package ``module`` or raises an ImportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = err.name or module
        if missing != module and not module.startswith(missing + "."):
            # The host is there but one of its own imports failed: say so, not "not installed".
            raise ImportError(f"{integration}: {pip_name!r} is installed but importing {module} failed: {err}") from err
        raise ImportError(
            f"{integration} needs the {pip_name!r} package, which is not installed "
            f"(`pip install {pip_name}`); fastjl itself does not depend on it."
        ) from err


def kind_for(proj_type, aliases: Mapping[str, str], host: str) -> str:
    """fastjl's kind for a host's projection type (a string or a ``str`` Enum member)."""
    name = getattr(proj_type, "value", proj_type)
    if name not in aliases:
        valid = ", ".join(repr(a) for a in aliases)
        raise ValueError(f"proj_type={name!r} is not supported by fastjl's {host} projector; use one of {valid}")
    return aliases[name]


def route(proj_type, fastjl_kinds: Mapping[str, str], host_types, host: str) -> str | None:
    """Which implementation serves a host's projection type: fastjl's kind (a str) when
    ``fastjl_kinds`` maps it, None when it is one of ``host_types`` that fastjl hands back to the
    host's own implementation.  Anything else is a ValueError listing both.

    Moving a type from the host to fastjl (e.g. ``"sjlt"`` once fastjl has it) is one entry in
    ``fastjl_kinds``; nothing else changes.
    """
    name = getattr(proj_type, "value", proj_type)
    if not isinstance(name, str):
        raise TypeError(f"proj_type must be a str or a {host} ProjectionType, got {type(proj_type).__name__}")
    if name in fastjl_kinds:
        return fastjl_kinds[name]
    if name in host_types:
        return None
    valid = ", ".join(repr(a) for a in (*fastjl_kinds, *(t for t in host_types if t not in fastjl_kinds)))
    raise ValueError(f"proj_type={name!r} is not a projection type of {host}; use one of {valid}")


def seed_for(seed: int, index: int, stride: int, what: str) -> int:
    """``seed + stride * index``: each checkpoint (ensemble member) gets its own matrix."""
    if isinstance(index, bool) or not hasattr(index, "__index__") or operator.index(index) < 0:
        raise ValueError(f"{what} must be a non-negative int, got {index!r}")
    index = operator.index(index)  # numpy ints are fine, floats are not
    full = seed + stride * index
    if full > MAX_SEED:
        raise ValueError(f"seed + {stride} * {what} = {full} exceeds 2^64 - 1")
    return full


def project_grads(grads, proj_dim: int, *, grad_dim: int, device, **opts) -> torch.Tensor:
    """:func:`fastjl.projector.project_gradients` with each chunk moved to ``device`` (None:
    where it is) and float64 chunks rounded to float32.  Returns ``(B, proj_dim)`` float32."""
    return project_gradients(grads, proj_dim, grad_dim=grad_dim, prepare=lambda x: _to_input(x, device), **opts)


def _to_input(x: torch.Tensor, device) -> torch.Tensor:
    # Hosts hand over float64 grads when the model is in float64; fastjl's fast backends take
    # fp32/fp16/bf16 and accumulate in fp32 anyway, so rounding the input loses nothing more.
    if device is not None:
        x = x.to(device)
    return x.float() if x.dtype == torch.float64 else x

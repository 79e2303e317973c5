"""Choosing the gradient path: hooks + ``fastjl.project_linear`` where the model allows it."""

from __future__ import annotations

import logging

import torch

from .gradients import FunctionalGradientComputer, GradientComputer, select_parameters
from .hooked_gradients import LinearHooksGradientComputer, hooks_unavailable

logger = logging.getLogger("trak_core")

PROJ_KINDS = ("rademacher", "gaussian", "kronecker", "sjlt", "grass", "factgrass")
# Kinds that sketch Linear layers with a structure of their own: they need the hooks path.
LINEAR_SKETCHES = ("kronecker", "factgrass")


def make_gradient_computer(
    choice, model: torch.nn.Module, task, grad_wrt, proj_kind: str, factor_masks=None
) -> GradientComputer:
    """The gradient computer for ``choice``: ``"auto"`` or a :class:`GradientComputer` class.

    ``"auto"`` takes :class:`LinearHooksGradientComputer` when the model has hookable
    ``nn.Linear`` layers and the task computes f for a whole batch, and
    :class:`FunctionalGradientComputer` otherwise.  ``proj_kind="kronecker"`` and ``"factgrass"``
    (with ``factor_masks``) need the hooks path.
    The sparse kinds (``"sjlt"``, ``"grass"``) take either path with the same features: the hooks
    path forms their Linear layers' gradients one bounded block at a time
    (:mod:`trak_core.sparse_hooks`).
    """
    if proj_kind not in PROJ_KINDS:
        raise ValueError(f"proj_kind must be one of {PROJ_KINDS}, got {proj_kind!r}")
    if factor_masks is not None and proj_kind != "factgrass":
        raise ValueError(f"factor_masks applies to proj_kind='factgrass' only, not {proj_kind!r}")
    linear_kind = proj_kind if proj_kind in LINEAR_SKETCHES else None
    sketch = {"linear_kind": linear_kind} if linear_kind else {}
    if linear_kind == "factgrass":
        sketch["factor_masks"] = factor_masks
    if choice == "auto":
        reason = hooks_unavailable(model, task, select_parameters(model, grad_wrt))
        if reason is None:
            return LinearHooksGradientComputer(model=model, task=task, grad_wrt=grad_wrt, **sketch)
        if linear_kind:
            raise ValueError(f"proj_kind={linear_kind!r} needs the hooks gradient path, which cannot be used: {reason}")
        logger.info("featurizing through torch.func: %s", reason)
        return FunctionalGradientComputer(model=model, task=task, grad_wrt=grad_wrt)
    if not (isinstance(choice, type) and issubclass(choice, GradientComputer)):
        raise TypeError(f"gradient_computer must be 'auto' or a GradientComputer class, got {choice!r}")
    if linear_kind:
        if not issubclass(choice, LinearHooksGradientComputer):
            raise ValueError(f"proj_kind={linear_kind!r} needs LinearHooksGradientComputer, got {choice.__name__}")
        return choice(model=model, task=task, grad_wrt=grad_wrt, **sketch)
    return choice(model=model, task=task, grad_wrt=grad_wrt)

"""The hooks gradient path: projected per-example gradients without forming them.

For every hookable ``nn.Linear`` (see :func:`~trak_core.linear_hooks.find_linear_layers`) one
batched forward and one backward give the layer's inputs ``a`` and output gradients ``g``, and
:func:`fastjl.project_linear` projects ``Σ_t g aᵀ`` per example at the layer's offset in the
model's parameter order.  The other differentiated parameters (convolutions, norms,
embeddings, tied weights, ...) go through ``torch.func`` as before, at their own offsets.  For
the dense kinds the features therefore equal :class:`FunctionalGradientComputer`'s to float32
rounding; per-example gradients of the hooked layers are never materialized, so batches need
no ``proj_max_batch_size`` limit for them.
"""

from __future__ import annotations

import logging

import torch

import fastjl

from .featurize import batch_size
from .gradients import FunctionalGradientComputer
from .linear_hooks import LinearCapture, find_linear_layers
from .model_output import has_batched_outputs

logger = logging.getLogger("trak_core")

# Relative tolerance of the first-batch check Σ_b G_b == autograd's weight gradient; a layer
# whose weight is also used outside its module call misses a whole term (an O(1) difference).
_CHECK_TOLERANCE = 1e-3


def hooks_unavailable(model: torch.nn.Module, task, param_names: list[str]) -> str | None:
    """Why the hooks path cannot featurize ``model`` for ``task``, or None."""
    if not has_batched_outputs(task):
        return f"the task {type(task).__name__} does not define get_outputs (f of a whole batch)"
    if not find_linear_layers(model, param_names):
        return "no hookable nn.Linear layer among the differentiated parameters"
    return None


class LinearHooksGradientComputer(FunctionalGradientComputer):
    """Gradient path through hooks on ``nn.Linear`` layers and :func:`fastjl.project_linear`.

    Args:
        model, task, grad_wrt: as for :class:`FunctionalGradientComputer`.
        linear_kind: None to project Linear layers with the projector's kind (identical
            features to the ``torch.func`` path), or ``"kronecker"`` for the structured kind
            (the other parameters then use the projector's dense kind).
    """

    def __init__(self, model: torch.nn.Module, task, grad_wrt=None, linear_kind: str | None = None):
        super().__init__(model, task, grad_wrt)
        reason = hooks_unavailable(model, task, self.param_names)
        if reason is not None:
            raise ValueError(f"the hooks gradient path cannot be used: {reason}")
        if linear_kind not in (None, "kronecker"):
            raise ValueError(f"linear_kind must be None or 'kronecker', got {linear_kind!r}")
        self.linear_kind = linear_kind
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        starts = torch.tensor([0] + [sizes[n] for n in self.param_names]).cumsum(0).tolist()
        self.offsets = dict(zip(self.param_names, starts))
        self.layers = find_linear_layers(model, self.param_names)
        self._checked = False
        self._set_fallback()

    def _set_fallback(self) -> None:
        hooked = {name for layer in self.layers for name in (layer.weight, layer.bias) if name}
        self.fallback_names = [n for n in self.param_names if n not in hooked]
        self._fallback = None
        if self.fallback_names:
            self._fallback = FunctionalGradientComputer(self.model, self.task, self.fallback_names)

    def load_model_params(self, model: torch.nn.Module) -> None:
        super().load_model_params(model)
        if getattr(self, "_fallback", None) is not None:
            self._fallback.load_model_params(model)

    def projected_per_sample_grad(self, batch, projector, model_id: int) -> torch.Tensor:
        if not isinstance(projector, fastjl.Projector):  # a custom projector needs the gradients
            return super().projected_per_sample_grad(batch, projector, model_id)
        captured = self._capture(batch)
        opts = dict(seed=projector.seed_for(model_id), backend=projector.backend, scale=projector.scale)
        dense, proj_dim = projector.kind, projector.proj_dim
        result = None
        for layer, tensors in zip(self.layers, captured):
            if tensors is None:  # not called in this forward: its weight had no effect on f
                continue
            a, g = tensors
            offset = self.offsets[layer.weight]
            if self.linear_kind == "kronecker":
                part = fastjl.project_linear(
                    a, g, proj_dim, kind="kronecker", offset=offset, bias=layer.bias is not None, **opts
                )
            else:
                bias_follows = layer.bias is not None and self.offsets[layer.bias] == offset + layer.d_out * layer.d_in
                part = fastjl.project_linear(a, g, proj_dim, kind=dense, offset=offset, bias=bias_follows, **opts)
                if layer.bias is not None and not bias_follows:
                    part += fastjl.project(g.sum(1), proj_dim, kind=dense, offset=self.offsets[layer.bias], **opts)
            result = part if result is None else result.add_(part)
        if self._fallback is not None:
            for name, grad in self._fallback.compute_per_sample_grad(batch).items():
                chunk = grad.reshape(grad.shape[0], -1)
                part = fastjl.project(chunk, proj_dim, kind=dense, offset=self.offsets[name], **opts)
                result = part if result is None else result.add_(part)
        return result

    def _capture(self, batch) -> list:
        """``[(a, g) or None]`` per hooked layer from one forward and one backward pass.

        On the first batch it also takes autograd's (batch-summed) weight and bias gradients
        and moves every layer whose captured tensors do not reproduce them to the
        ``torch.func`` path, then captures again.
        """
        hooked = [name for layer in self.layers for name in (layer.weight, layer.bias) if name]
        weights = {**self._weights, **self._frozen}
        for name in hooked:
            weights[name] = weights[name].detach().requires_grad_(True)
        with LinearCapture(self.layers) as capture:
            total = self.task.get_outputs(self.model, weights, self._buffers, batch).sum()
        if self._checked:
            return capture.activations_and_gradients(total, batch_size(batch))
        param_grads = torch.autograd.grad(total, [weights[n] for n in hooked], retain_graph=True, allow_unused=True)
        param_grads = dict(zip(hooked, param_grads))
        captured = capture.activations_and_gradients(total, batch_size(batch))
        faithful = [self._reproduces(layer, tensors, param_grads) for layer, tensors in zip(self.layers, captured)]
        self._checked = True
        if all(faithful):
            return captured
        for layer, ok in zip(self.layers, faithful):
            if not ok:
                logger.warning("layer %r: hooks miss part of its gradient; using torch.func for it", layer.module_name)
        self.layers = [layer for layer, ok in zip(self.layers, faithful) if ok]
        self._set_fallback()
        return self._capture(batch)

    @staticmethod
    def _reproduces(layer, tensors, param_grads: dict) -> bool:
        """Whether ``Σ_b Σ_t g aᵀ`` (and ``Σ g``) equal autograd's gradients of the layer."""
        if tensors is None:
            return False  # never called: its weight may still be used some other way
        a, g = tensors
        pairs = [(torch.einsum("bto,bti->oi", g, a), param_grads[layer.weight])]
        if layer.bias is not None:
            pairs.append((g.sum((0, 1)), param_grads[layer.bias]))
        for mine, theirs in pairs:
            theirs = torch.zeros_like(mine) if theirs is None else theirs
            scale = max(mine.norm().item(), theirs.norm().item())
            if (mine - theirs).norm().item() > _CHECK_TOLERANCE * scale:
                return False
        return True

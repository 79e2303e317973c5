"""Capturing the inputs ``a`` and output gradients ``g`` of a model's hookable layers.

One ordinary forward pass with forward hooks records every hooked layer's input and output;
one ``torch.autograd.grad`` of the summed model outputs with respect to those outputs gives
``g``.  Since examples do not interact (eval mode), per-example parameter gradients follow
from ``(a, g)``:

* ``nn.Linear``: weight ``Σ_t g[b, t] a[b, t]ᵀ`` (projected by :func:`fastjl.project_linear`
  without being formed), bias ``Σ_t g[b, t]``;
* ``nn.Conv2d``: the same with ``a`` the unfolded input patches and ``t`` the output positions;
* ``nn.LayerNorm``: weight ``Σ_t g[b, t] ⊙ â[b, t]`` (``â`` the normalized input), bias
  ``Σ_t g[b, t]``: only ``B × d`` numbers, formed and projected with :func:`fastjl.project`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HookedLayer:
    """A hooked module and the names of its differentiated parameters."""

    module_name: str
    module: torch.nn.Module
    weight: str | None  # parameter name of the weight if it exists and is differentiated
    bias: str | None  # the same for the bias

    @property
    def param_names(self) -> list[str]:
        return [name for name in (self.weight, self.bias) if name]

    def per_example_bias_grad(self, g: torch.Tensor) -> torch.Tensor:
        """``(B, d)``: ``Σ_t g[b, t]``, the bias gradient of every layer type."""
        return g.sum(1)

    def as_tokens(self, inp: torch.Tensor, grad_out: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a (B, T, d_in), g (B, T, d_out))`` from one call's input and output gradient:
        every position other than the batch and the feature dimension is a token."""
        return inp.reshape(batch, -1, self.d_in), grad_out.reshape(batch, -1, self.d_out)


@dataclass(frozen=True)
class LinearLayer(HookedLayer):
    """``a``: ``(B, T, d_in)`` inputs; ``g``: ``(B, T, d_out)`` output gradients."""

    @property
    def d_out(self) -> int:
        return self.module.out_features

    @property
    def d_in(self) -> int:
        return self.module.in_features

    def summed_grads(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gradients summed over the batch (to check against autograd's)."""
        grads = {self.weight: torch.einsum("bto,bti->oi", g, a)}
        if self.bias:
            grads[self.bias] = g.sum((0, 1))
        return grads


@dataclass(frozen=True)
class Conv2dLayer(LinearLayer):
    """An ``nn.Conv2d`` (one group, zero padding) as a Linear layer over its unfolded input:
    every output position is a token, ``a`` holds the input patches (``d_in = C_in·kh·kw``,
    in the weight's ``(C_in, kh, kw)`` order) and ``g`` the output gradients there."""

    @property
    def d_out(self) -> int:
        return self.module.out_channels

    @property
    def d_in(self) -> int:
        return self.module.in_channels * math.prod(self.module.kernel_size)

    @staticmethod
    def supports(module: torch.nn.Conv2d) -> bool:
        return module.groups == 1 and module.padding_mode == "zeros" and module.padding != "same"

    def as_tokens(self, inp, grad_out, batch):
        m = self.module
        padding = 0 if m.padding == "valid" else m.padding
        patches = torch.nn.functional.unfold(inp, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
        return patches.transpose(1, 2), grad_out.reshape(batch, self.d_out, -1).transpose(1, 2)


@dataclass(frozen=True)
class LayerNormLayer(HookedLayer):
    """``a``, ``g``: ``(B, T, d)`` with d the normalized size (``prod(normalized_shape)``)."""

    @property
    def d_in(self) -> int:
        return math.prod(self.module.normalized_shape)

    d_out = d_in

    def per_example_grads(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B, d)}`` per-example gradients of the differentiated parameters."""
        grads = {}
        if self.weight:
            normalized = torch.nn.functional.layer_norm(a, (a.shape[-1],), eps=self.module.eps)
            grads[self.weight] = (g * normalized).sum(1)
        if self.bias:
            grads[self.bias] = self.per_example_bias_grad(g)
        return grads

    def summed_grads(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: grad.sum(0) for name, grad in self.per_example_grads(a, g).items()}


def find_hooked_layers(model: torch.nn.Module, param_names: list[str]) -> list[HookedLayer]:
    """The ``nn.Linear``, ``nn.Conv2d`` (one group, zero padding) and ``nn.LayerNorm`` layers
    with a parameter among ``param_names`` that can be hooked (a Linear or Conv2d needs its
    weight differentiated, its bias may or may not be).

    Left out (their parameters go through ``torch.func``): layers whose parameters are shared
    with another module (tied weights: hooks would see only one of the uses), and Linear
    modules inside ``nn.MultiheadAttention``, which uses their weights functionally without
    calling them.  :class:`~trak_core.hooked_gradients.LinearHooksGradientComputer` also checks on
    the first batch that the captured tensors reproduce each layer's gradient.
    """
    selected = set(param_names)
    name_of = {id(p): n for n, p in model.named_parameters()}
    owners = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)
    inside_attention = {
        f"{prefix}.{child}" if prefix else child
        for prefix, m in model.named_modules()
        if isinstance(m, torch.nn.MultiheadAttention)
        for child, _ in m.named_modules()
        if child
    }
    def selected_name(param) -> str | None | bool:
        """The parameter's name if differentiated, None if not (or absent), False if shared."""
        if param is None or name_of.get(id(param)) not in selected:
            return None
        return name_of[id(param)] if owners[id(param)] == 1 else False

    layers: list[HookedLayer] = []
    for module_name, module in model.named_modules():
        if module_name in inside_attention:
            continue
        if isinstance(module, torch.nn.Linear):
            layer_type = LinearLayer
        elif isinstance(module, torch.nn.Conv2d) and Conv2dLayer.supports(module):
            layer_type = Conv2dLayer
        elif isinstance(module, torch.nn.LayerNorm):
            layer_type = LayerNormLayer
        else:
            continue
        weight, bias = selected_name(module.weight), selected_name(module.bias)
        needs_weight = issubclass(layer_type, LinearLayer)
        if weight is False or bias is False or (needs_weight and not weight) or not (weight or bias):
            continue
        layers.append(layer_type(module_name, module, weight, bias))
    return layers


class LayerCapture:
    """Forward hooks recording the input and output of every call of the given layers.

    Use as a context manager around one forward pass; a layer called several times (shared
    within the forward) has its calls concatenated along the token axis, which is exactly how
    their gradients add up.
    """

    def __init__(self, layers: list[HookedLayer]):
        self.layers = layers
        self.inputs: list[list[torch.Tensor]] = [[] for _ in layers]
        self.outputs: list[list[torch.Tensor]] = [[] for _ in layers]
        self._handles = []

    def __enter__(self) -> LayerCapture:
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.module.register_forward_hook(self._recorder(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, index: int):
        def record(module, inputs, output):
            self.inputs[index].append(inputs[0])
            self.outputs[index].append(output)

        return record

    def called(self, index: int) -> bool:
        return bool(self.outputs[index])

    def activations_and_gradients(self, total: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(a (B, T, d_in), g (B, T, d_out))]`` per layer, from ``total = Σ_b f_b``.

        Layers not called in the forward get ``None``.  Raises ValueError if a layer's input
        does not have the batch as its first dimension (per-example gradients would then be
        mixed up; use the ``torch.func`` path for such models).
        """
        flat_outputs = [out for outs in self.outputs for out in outs]
        grads = torch.autograd.grad(total, flat_outputs, allow_unused=True) if flat_outputs else ()
        grads = iter(grads)
        result = []
        for layer, ins, outs in zip(self.layers, self.inputs, self.outputs):
            if not outs:
                result.append(None)
                continue
            a_parts, g_parts = [], []
            for a, out in zip(ins, outs):
                g = next(grads)
                if a.dim() < 2 or a.shape[0] != batch:
                    raise ValueError(
                        f"layer {layer.module_name!r} got an input of shape {tuple(a.shape)}, whose first "
                        f"dimension is not the batch ({batch}); featurize with FunctionalGradientComputer"
                    )
                a, g = layer.as_tokens(a.detach(), torch.zeros_like(out) if g is None else g, batch)
                a_parts.append(a)
                g_parts.append(g)
            cat = (lambda parts: parts[0]) if len(a_parts) == 1 else (lambda parts: torch.cat(parts, dim=1))
            result.append((cat(a_parts), cat(g_parts)))
        return result

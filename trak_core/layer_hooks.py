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
        """``(B, d)`` float32: ``Σ_t g[b, t]``, the bias gradient of every layer type."""
        return g.float().sum(1)

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
        grads = {self.weight: torch.einsum("bto,bti->oi", g.float(), a.float())}
        if self.bias:
            grads[self.bias] = g.float().sum((0, 1))
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
class Conv1DLayer(LinearLayer):
    """Hugging Face's ``Conv1D`` (GPT-2 family): a Linear layer whose weight is stored transposed,
    ``(d_in, d_out)``, and applied as ``x @ W + b``.  Its per-example weight gradient in
    ``weight.flatten()`` order is ``Σ_t a g ᵀ``: :func:`fastjl.project_linear` with the roles
    of ``a`` and ``g`` swapped (the hooks path does that, and projects the bias on its own)."""

    transposed = True

    @property
    def d_out(self) -> int:
        return self.module.nf

    @property
    def d_in(self) -> int:
        return self.module.weight.shape[0]

    @staticmethod
    def supports(module: torch.nn.Module) -> bool:
        # Matched by name and layout so that transformers need not be imported.
        weight = getattr(module, "weight", None)
        return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.nn.Parameter) and weight.dim() == 2
                and weight.shape[1] == getattr(module, "nf", None))  # fmt: skip

    def summed_grads(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        grads = {self.weight: torch.einsum("bti,bto->io", a.float(), g.float())}
        if self.bias:
            grads[self.bias] = g.float().sum((0, 1))
        return grads


@dataclass(frozen=True)
class LayerNormLayer(HookedLayer):
    """``a``, ``g``: ``(B, T, d)`` with d the normalized size (``prod(normalized_shape)``)."""

    @property
    def d_in(self) -> int:
        return math.prod(self.module.normalized_shape)

    d_out = d_in

    def per_example_grads(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B, d)}`` per-example gradients of the differentiated parameters."""
        a, g = a.float(), g.float()  # 16-bit models: accumulate over tokens in float32
        grads = {}
        if self.weight:
            grads[self.weight] = (g * self.normalized(a)).sum(1)
        if self.bias:
            grads[self.bias] = self.per_example_bias_grad(g)
        return grads

    def normalized(self, a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(a, (a.shape[-1],), eps=self.module.eps)

    def summed_grads(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: grad.sum(0) for name, grad in self.per_example_grads(a, g).items()}


@dataclass(frozen=True)
class RMSNormLayer(LayerNormLayer):
    """``torch.nn.RMSNorm`` or a model's own ``*RMSNorm`` (Llama, Mistral, ...; weight only):
    weight gradient ``Σ_t g ⊙ a / sqrt(mean(a²) + eps)``, formed (``B × d``) and projected.
    A variant that differs (Gemma's ``1 + weight`` has the same gradient) is caught by the
    first-batch check and moved to ``torch.func``."""

    @property
    def d_in(self) -> int:
        return self.module.weight.numel()

    d_out = d_in

    @staticmethod
    def supports(module: torch.nn.Module) -> bool:
        if isinstance(module, torch.nn.RMSNorm):
            return True
        weight = getattr(module, "weight", None)
        return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, torch.nn.Parameter)
                and weight.dim() == 1 and getattr(module, "bias", None) is None
                and isinstance(_rms_eps(module), float))  # fmt: skip

    def normalized(self, a: torch.Tensor) -> torch.Tensor:
        eps = _rms_eps(self.module)
        eps = torch.finfo(a.dtype).eps if eps is None else eps
        return a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + eps)


def _rms_eps(module) -> float | None:
    for name in ("eps", "variance_epsilon"):
        if hasattr(module, name):
            value = getattr(module, name)
            return float(value) if isinstance(value, (int, float)) else value
    return None


def layer_type(module: torch.nn.Module) -> type[HookedLayer] | None:
    """The :class:`HookedLayer` class that handles ``module``, or None."""
    from .embedding_hooks import EmbeddingLayer  # it builds on this module

    if isinstance(module, torch.nn.Linear):
        return LinearLayer
    if isinstance(module, torch.nn.Conv2d):
        return Conv2dLayer if Conv2dLayer.supports(module) else None
    if isinstance(module, torch.nn.LayerNorm):
        return LayerNormLayer
    if isinstance(module, torch.nn.Embedding):
        return EmbeddingLayer if EmbeddingLayer.supports(module) else None
    for candidate in (Conv1DLayer, RMSNormLayer):
        if candidate.supports(module):
            return candidate
    return None


def find_hooked_layers(model: torch.nn.Module, param_names: list[str]) -> list[HookedLayer]:
    """The layers of :func:`layer_type` with a parameter among ``param_names`` that can be
    hooked (a Linear, Conv1D or Conv2d needs its weight differentiated, its bias may or may not be).

    A parameter shared by several modules (tied weights, e.g. an embedding reused as the output
    layer) is hooked when every module holding it is hooked: each call's part of the gradient
    is projected at the parameter's offset, and the parts add up as the gradients do.  Left out
    (their parameters go through ``torch.func``): other shared parameters, and Linear modules
    inside ``nn.MultiheadAttention``, which uses their weights functionally without calling
    them.  :class:`~trak_core.hooked_gradients.LinearHooksGradientComputer` also checks on the
    first batch that the captured tensors reproduce each parameter's gradient.
    """
    selected = set(param_names)
    name_of = {id(p): n for n, p in model.named_parameters()}
    inside_attention = {
        f"{prefix}.{child}" if prefix else child
        for prefix, m in model.named_modules()
        if isinstance(m, torch.nn.MultiheadAttention)
        for child, _ in m.named_modules()
        if child
    }

    def selected_name(param) -> str | None:
        """The parameter's name if differentiated, None if not (or absent)."""
        if param is None or name_of.get(id(param)) not in selected:
            return None
        return name_of[id(param)]

    layers: list[HookedLayer] = []
    for module_name, module in model.named_modules():
        kind = None if module_name in inside_attention else layer_type(module)
        if kind is None:
            continue
        weight = selected_name(getattr(module, "weight", None))
        bias = selected_name(getattr(module, "bias", None))
        if (issubclass(kind, LinearLayer) and not weight) or not (weight or bias):
            continue
        layers.append(kind(module_name, module, weight, bias))
    # A shared parameter stays hooked only if every module holding it was hooked with it.
    holders = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)
    hooked_uses = Counter(name for layer in layers for name in layer.param_names)
    params = dict(model.named_parameters())
    partial = {name for name, uses in hooked_uses.items() if uses != holders[id(params[name])]}
    return drop_layers_using(layers, partial)


def drop_layers_using(layers: list[HookedLayer], names: set[str]) -> list[HookedLayer]:
    """``layers`` without those using a parameter of ``names``, nor (repeatedly) those sharing a
    parameter with a dropped layer: a parameter is hooked in all its uses or in none."""
    names = set(names)
    while True:
        dropped = [layer for layer in layers if names.intersection(layer.param_names)]
        if not dropped:
            return layers
        layers = [layer for layer in layers if layer not in dropped]
        names.update(name for layer in dropped for name in layer.param_names)


# What :meth:`LayerCapture.activations_and_gradients` gives a layer called without a batch dimension.
UNBATCHED = "unbatched"


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

    def activations_and_gradients(
        self, total: torch.Tensor, batch: int, unbatched_ok: bool = False
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(a (B, T, d_in), g (B, T, d_out))]`` per layer, from ``total = Σ_b f_b``.

        Layers not called in the forward get ``None``.  A layer whose input does not have the
        batch as its first dimension (e.g. position ids shared by all examples: its output
        gradient is summed over the batch, so per-example gradients would be mixed up) gets
        :data:`UNBATCHED` if ``unbatched_ok``, else raises ValueError.
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
            unbatched = any(a.dim() < 2 or a.shape[0] != batch for a in ins)
            if unbatched and unbatched_ok:
                result.append(UNBATCHED)
                for _ in outs:
                    next(grads)
                continue
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

"""Capturing the inputs ``a`` and output gradients ``g`` of a model's ``nn.Linear`` layers.

One ordinary forward pass with forward hooks records every hooked layer's input and output;
one ``torch.autograd.grad`` of the summed model outputs with respect to those outputs gives
``g``.  Since examples do not interact (eval mode), example b's weight gradient is
``Σ_t g[b, t] a[b, t]ᵀ``: :func:`fastjl.project_linear` projects it without forming it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearLayer:
    """A hooked ``nn.Linear``: its module and the names of its differentiated parameters."""

    module_name: str
    module: torch.nn.Linear
    weight: str  # parameter name of the weight (always differentiated)
    bias: str | None  # parameter name of the bias if it exists and is differentiated

    @property
    def d_out(self) -> int:
        return self.module.out_features

    @property
    def d_in(self) -> int:
        return self.module.in_features


def find_linear_layers(model: torch.nn.Module, param_names: list[str]) -> list[LinearLayer]:
    """The ``nn.Linear`` layers whose weight is among ``param_names`` and can be hooked.

    Left out (their parameters go through ``torch.func``): layers whose parameters are shared
    with another module (tied weights: hooks would see only one of the uses), and Linear
    modules inside ``nn.MultiheadAttention``, which uses their weights functionally without
    calling them.  :class:`~trak_core.hooked_gradients.LinearHooksGradientComputer` also checks on
    the first batch that the captured tensors reproduce the layer's gradient.
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
    layers = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module_name in inside_attention:
            continue
        weight = name_of.get(id(module.weight))
        if weight not in selected or owners[id(module.weight)] != 1:
            continue
        bias = None
        if module.bias is not None:
            bias_name = name_of.get(id(module.bias))
            if bias_name in selected:
                if owners[id(module.bias)] != 1:
                    continue
                bias = bias_name
        layers.append(LinearLayer(module_name, module, weight, bias))
    return layers


class LinearCapture:
    """Forward hooks recording the input and output of every call of the given layers.

    Use as a context manager around one forward pass; a layer called several times (shared
    within the forward) has its calls concatenated along the token axis, which is exactly how
    their gradients add up.
    """

    def __init__(self, layers: list[LinearLayer]):
        self.layers = layers
        self.inputs: list[list[torch.Tensor]] = [[] for _ in layers]
        self.outputs: list[list[torch.Tensor]] = [[] for _ in layers]
        self._handles = []

    def __enter__(self) -> LinearCapture:
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
                a_parts.append(a.detach().reshape(batch, -1, layer.d_in))
                g_parts.append((torch.zeros_like(out) if g is None else g).reshape(batch, -1, layer.d_out))
            cat = (lambda parts: parts[0]) if len(a_parts) == 1 else (lambda parts: torch.cat(parts, dim=1))
            result.append((cat(a_parts), cat(g_parts)))
        return result

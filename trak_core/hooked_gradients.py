"""The hooks gradient path: projected per-example gradients without forming them.

For every hookable layer (see :func:`~trak_core.layer_hooks.find_hooked_layers`: ``nn.Linear``,
``nn.Conv2d``, HF ``Conv1D``, ``nn.Embedding``, ``nn.LayerNorm``, RMSNorm) one batched forward
and one backward give the layer's inputs ``a`` and output gradients ``g``.
:func:`fastjl.project_linear` projects a Linear layer's ``Σ_t g aᵀ`` per example at the
layer's offset in the model's parameter order (a convolution is a Linear layer over its
unfolded input patches; a ``Conv1D`` swaps ``a`` and ``g``); an embedding is projected through
the rows of P its tokens touch (:mod:`trak_core.embedding_hooks`); norm gradients are only
``B × d``: formed, then projected.  A tied weight is hooked in each of its uses.  The other
differentiated parameters (grouped convolutions, weights also used functionally, layers
called without a batch dimension, ...) go through ``torch.func`` at their own offsets; that
costs a ``torch.func`` pass over the whole model, so the hooks path pays off most when they
are few or excluded with ``grad_wrt``.  For the dense kinds the features therefore equal
:class:`FunctionalGradientComputer`'s to float32 rounding; per-example gradients of the hooked
layers are never materialized, so batches need no ``proj_max_batch_size`` limit for them.
The sparse kinds (``sjlt``, ``grass``) have no ``project_linear``: their Linear layers'
gradients are formed one bounded block of rows at a time and projected at the block's offset
(:mod:`trak_core.sparse_hooks`), so their features also equal the ``torch.func`` path's and
memory stays bounded, but the cost of forming ``B·d_out·d_in`` entries is paid.
``linear_kind="factgrass"`` (GraSS's FactGraSS, :mod:`fastjl.factgrass_spec`) sketches each
Linear/Conv1D/Conv2d layer with ``fastjl.project_linear(kind="factgrass")`` (only the masked
``k_out × k_in`` part of its gradient is formed) and each embedding as the (V, d) Linear weight
it is (one-hot tokens as the output factor: a tied embedding and head add up to one sketch of
their summed gradient); every other parameter (norms, ``torch.func`` parameters, a bias whose
rows do not follow its weight's) gets plain ``sjlt`` at its own offset, as the sparse kinds do.
"""

from __future__ import annotations

import logging

import torch

import fastjl
from fastjl.factgrass_spec import MAX_FACTOR_DIM, check_factor_masks
from fastjl.sparse_spec import SPARSE_KINDS

from .embedding_hooks import EmbeddingLayer
from .featurize import batch_size
from .gradients import FunctionalGradientComputer
from .layer_hooks import UNBATCHED, LayerCapture, LinearLayer, drop_layers_using, find_hooked_layers
from .model_output import has_batched_outputs
from .projection import projection_options
from .sparse_hooks import project_linear_formed, project_token_rows

logger = logging.getLogger("trak_core")

# Relative tolerance of the first-batch check Σ_b G_b == autograd's weight gradient; a layer
# whose weight is also used outside its module call misses a whole term (an O(1) difference).
# 16-bit models: autograd's gradient is rounded to the parameter's dtype, the hooks' sum is not.
_CHECK_TOLERANCE = {torch.float16: 3e-2, torch.bfloat16: 3e-2}
_DEFAULT_CHECK_TOLERANCE = 1e-3

# Layers whose per-example gradients are projected without being formed.
UNFORMED = (LinearLayer, EmbeddingLayer)


def hooks_unavailable(model: torch.nn.Module, task, param_names: list[str]) -> str | None:
    """Why the hooks path cannot featurize ``model`` for ``task``, or None."""
    if not has_batched_outputs(task):
        return f"the task {type(task).__name__} does not define get_outputs (f of a whole batch)"
    if not any(isinstance(layer, UNFORMED) for layer in find_hooked_layers(model, param_names)):
        return "no hookable nn.Linear, Conv1D, Conv2d or nn.Embedding layer among the differentiated parameters"
    return None


class LinearHooksGradientComputer(FunctionalGradientComputer):
    """Gradient path through hooks on ``nn.Linear`` (and ``nn.LayerNorm``) layers and
    :func:`fastjl.project_linear`.

    Args:
        model, task, grad_wrt: as for :class:`FunctionalGradientComputer`.
        linear_kind: None to project Linear layers with the projector's kind (identical
            features to the ``torch.func`` path), or ``"kronecker"`` for the structured kind
            (the other parameters then use the projector's dense kind), or ``"factgrass"``
            (the projector's kind must be ``"sjlt"``; the other parameters use it).
        factor_masks: ``(k_out, k_in)`` for ``"factgrass"`` (required there, refused otherwise):
            coordinates kept of each layer's output and input factors; a factor smaller than
            its mask is kept whole (as dattri's FactGraSS does).
    """

    def __init__(self, model: torch.nn.Module, task, grad_wrt=None, linear_kind: str | None = None, factor_masks=None):
        super().__init__(model, task, grad_wrt)
        reason = hooks_unavailable(model, task, self.param_names)
        if reason is not None:
            raise ValueError(f"the hooks gradient path cannot be used: {reason}")
        if linear_kind not in (None, "kronecker", "factgrass"):
            raise ValueError(f"linear_kind must be None, 'kronecker' or 'factgrass', got {linear_kind!r}")
        if (linear_kind == "factgrass") != (factor_masks is not None):
            raise ValueError("factor_masks=(k_out, k_in) is required by linear_kind='factgrass' and only allowed there")
        if factor_masks is not None:
            check_factor_masks(factor_masks, MAX_FACTOR_DIM, MAX_FACTOR_DIM)
            factor_masks = tuple(int(k) for k in factor_masks)
        self.linear_kind, self.factor_masks = linear_kind, factor_masks
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        starts = torch.tensor([0] + [sizes[n] for n in self.param_names]).cumsum(0).tolist()
        self.offsets = dict(zip(self.param_names, starts))
        self.layers = find_hooked_layers(model, self.param_names)
        self._checked = False
        self._set_fallback()

    def _set_fallback(self) -> None:
        hooked = {name for layer in self.layers for name in layer.param_names}
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
        result = None
        for _, part, _, _ in self.projected_parts(batch, projector, projector.seed_for(model_id)):
            result = part if result is None else result.add_(part)
        return result

    def projected_parts(self, batch, projector, seed: int):
        """Yields ``(names, part, layer, tensors)``: ``part`` ``(B, K)`` projects the per-example
        gradients of the parameters ``names`` at their offsets (a hooked Linear/embedding layer's
        weight and bias; one formed parameter); ``layer`` and its captured ``tensors`` are None
        for ``torch.func`` parameters.  The parts add up to :meth:`projected_per_sample_grad`;
        per-module features place them by module instead (:mod:`trak_core.module_blocks`)."""
        captured = self._capture(batch)  # first: on the first batch it may drop layers
        for layer, tensors in zip(self.layers, captured):
            if tensors is None:  # not called in this forward: its weight had no effect on f
                continue
            if isinstance(layer, LinearLayer):
                yield layer.param_names, self._project_linear_layer(layer, *tensors, projector, seed), layer, tensors
            elif isinstance(layer, EmbeddingLayer):
                yield layer.param_names, self._project_embedding(layer, *tensors, projector, seed), layer, tensors
            else:
                for name, grad in layer.per_example_grads(*tensors).items():
                    yield [name], self._project_gradients({name: grad}, projector, seed), layer, tensors
        if self._fallback is not None:
            for name, grad in self._fallback.compute_per_sample_grad(batch).items():
                yield [name], self._project_gradients({name: grad}, projector, seed), None, None

    def _project_linear_layer(self, layer: LinearLayer, a, g, projector, seed: int) -> torch.Tensor:
        """``(B, K)``: the layer's per-example weight (and bias) gradients, projected unformed."""
        opts = dict(seed=seed, backend=projector.backend, scale=projector.scale)
        offset = self.offsets[layer.weight]
        if self.linear_kind == "factgrass":
            return self._project_factgrass_layer(layer, a, g, projector, seed)
        if projector.kind in SPARSE_KINDS:  # no sparse project_linear: G formed in bounded blocks
            return self._project_formed_linear(layer, a, g, projector, seed)
        if getattr(layer, "transposed", False) and self.linear_kind != "kronecker":
            # Conv1D: weight (d_in, d_out), per-example gradient Σ_t a gᵀ in flatten order.
            part = fastjl.project_linear(g, a, projector.proj_dim, kind=projector.kind, offset=offset, **opts)
            if layer.bias is not None:
                part += self._project_gradients({layer.bias: layer.per_example_bias_grad(g)}, projector, seed)
            return part
        # kronecker: a Conv1D is sketched as the nn.Linear it computes (weight Wᵀ).
        if self.linear_kind == "kronecker":  # the bias is the factor's extra input column
            return fastjl.project_linear(a, g, projector.proj_dim, kind="kronecker", offset=offset,
                                         bias=layer.bias is not None, **opts)  # fmt: skip
        # With the full parameter list the bias rows follow the weight's; with a grad_wrt
        # subset they may not, and the bias is projected on its own.
        weight_size = layer.d_out * layer.d_in
        bias_follows = layer.bias is not None and self.offsets[layer.bias] == offset + weight_size
        part = fastjl.project_linear(a, g, projector.proj_dim, kind=projector.kind, offset=offset, bias=bias_follows,
                                     **opts)  # fmt: skip
        if layer.bias is not None and not bias_follows:
            part += self._project_gradients({layer.bias: layer.per_example_bias_grad(g)}, projector, seed)
        return part

    def _project_factgrass_layer(self, layer: LinearLayer, a, g, projector, seed: int) -> torch.Tensor:
        """``(B, K)``: FactGraSS of the layer at its weight's offset, the bias as the input
        factor's column of ones when its rows follow the weight's, else plain sjlt at its own
        offset.  A Conv1D is sketched as the nn.Linear it computes (``a`` in, ``g`` out), as for
        kronecker."""
        if projector.kind != "sjlt":
            raise ValueError(f"linear_kind='factgrass' needs a projector of kind 'sjlt', got {projector.kind!r}")
        offset = self.offsets[layer.weight]
        bias_follows = layer.bias is not None and self.offsets[layer.bias] == offset + layer.d_out * layer.d_in
        k_out, k_in = self.factor_masks
        masks = (min(k_out, layer.d_out), min(k_in, layer.d_in + bias_follows))
        part = fastjl.project_linear(a, g, projector.proj_dim, kind="factgrass", seed=seed, offset=offset,
                                     bias=bias_follows, factor_masks=masks, sparsity=projector.sparsity,
                                     backend=projector.backend, scale=projector.scale)  # fmt: skip
        if layer.bias is not None and not bias_follows:
            part += self._project_gradients({layer.bias: layer.per_example_bias_grad(g)}, projector, seed)
        return part

    def _project_formed_linear(self, layer: LinearLayer, a, g, projector, seed: int) -> torch.Tensor:
        """``(B, K)``: a Linear layer's per-example gradients with a sparse kind, formed block by
        block (:mod:`trak_core.sparse_hooks`); the bias is projected at its own offset."""
        opts = dict(seed=seed, **projection_options(projector))
        first, second = (g, a) if getattr(layer, "transposed", False) else (a, g)  # Conv1D: Σ_t a gᵀ
        part = project_linear_formed(first, second, projector.proj_dim, offset=self.offsets[layer.weight], **opts)
        if layer.bias is not None:
            part += self._project_gradients({layer.bias: layer.per_example_bias_grad(g)}, projector, seed)
        return part

    def _project_embedding(self, layer: EmbeddingLayer, ids, g, projector, seed: int) -> torch.Tensor:
        """``(B, K)``: the embedding's per-example gradients, projected through the rows they touch."""
        offset = self.offsets[layer.weight]
        if self.linear_kind == "factgrass":  # consistent with a tied nn.Linear output layer's sketch
            return layer.project_factgrass(ids, g, projector.proj_dim, seed=seed, offset=offset,
                                           factor_masks=self.factor_masks, sparsity=projector.sparsity,
                                           backend=projector.backend, scale=projector.scale)  # fmt: skip
        if projector.kind in SPARSE_KINDS:
            distinct, rows = layer.token_rows(ids, g)
            opts = dict(seed=seed, **projection_options(projector))
            return project_token_rows(distinct, rows, projector.proj_dim, offset=offset, width=layer.d_in, **opts)
        if self.linear_kind == "kronecker":  # consistent with a tied nn.Linear output layer's sketch
            return layer.project_kronecker(ids, g, projector.proj_dim, seed=seed, offset=offset, scale=projector.scale)
        return layer.project(ids, g, projector.proj_dim, seed=seed, kind=projector.kind, offset=offset,
                             backend=projector.backend, scale=projector.scale)  # fmt: skip

    def _project_gradients(self, grads: dict, projector, seed: int) -> torch.Tensor:
        """``(B, K)``: materialized per-example gradients ``{name: (B, ...)}``, each projected
        with the projector's dense kind at the parameter's offset."""
        result = None
        opts = projection_options(projector)
        for name, grad in grads.items():
            flat = grad.reshape(grad.shape[0], -1)
            part = fastjl.project(flat, projector.proj_dim, seed=seed, offset=self.offsets[name], **opts)
            result = part if result is None else result.add_(part)
        return result

    def _capture(self, batch) -> list:
        """``[(a, g) or None]`` per hooked layer from one forward and one backward pass.

        On the first batch it also takes autograd's (batch-summed) weight and bias gradients
        and moves every layer whose captured tensors do not reproduce them to the
        ``torch.func`` path, then captures again.
        """
        # Gradients are needed even if the caller featurizes under torch.no_grad().
        with torch.enable_grad():
            return self._capture_with_grad(batch)

    def _capture_with_grad(self, batch) -> list:
        hooked = [name for layer in self.layers for name in layer.param_names]
        weights = {**self._weights, **self._frozen}
        for name in hooked:
            weights[name] = weights[name].detach().requires_grad_(True)
        with LayerCapture(self.layers) as capture:
            total = self.task.get_outputs(self.model, weights, self._buffers, batch).sum()
        if self._checked:
            return capture.activations_and_gradients(total, batch_size(batch))
        # First batch: layers called without a batch dimension move to torch.func (below).
        param_grads = torch.autograd.grad(total, [weights[n] for n in hooked], retain_graph=True, allow_unused=True)
        param_grads = dict(zip(hooked, param_grads))
        captured = capture.activations_and_gradients(total, batch_size(batch), unbatched_ok=True)
        unfaithful = self._unreproduced(captured, param_grads)
        self._checked = True
        if not unfaithful:
            return captured
        kept = drop_layers_using(self.layers, unfaithful)
        for layer in self.layers:
            if layer not in kept:
                logger.warning("layer %r: hooks miss part of its gradient; using torch.func for it", layer.module_name)
        self.layers = kept
        self._set_fallback()
        return self._capture_with_grad(batch)

    def _unreproduced(self, captured: list, param_grads: dict) -> set[str]:
        """The hooked parameters whose batch-summed gradient from the captured ``(a, g)`` (added
        over every layer using the parameter) differs from autograd's."""
        mine: dict[str, torch.Tensor] = {}
        missing = set()
        for layer, tensors in zip(self.layers, captured):
            if tensors is None or tensors is UNBATCHED:  # never called, or not per example
                missing.update(layer.param_names)
                continue
            for name, grad in layer.summed_grads(*tensors).items():
                mine[name] = grad if name not in mine else mine[name] + grad
        bad = set(missing)
        for name, grad in mine.items():
            theirs = param_grads[name]
            theirs = torch.zeros_like(grad) if theirs is None else theirs.reshape(grad.shape).float()
            tolerance = _CHECK_TOLERANCE.get(self._weights[name].dtype, _DEFAULT_CHECK_TOLERANCE)
            scale = max(grad.norm().item(), theirs.norm().item())
            if (grad - theirs).norm().item() > tolerance * scale:
                bad.add(name)
        return bad

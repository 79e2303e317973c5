"""Per-example gradients of the model output, as a dict of per-parameter tensors.

The featurizer talks to a *gradient computer* through :class:`GradientComputer`, so gradient
paths are interchangeable: :class:`FunctionalGradientComputer` (``torch.func``, any model) here,
and the hooks path (:mod:`trak_core.hooked_gradients`: hooks on ``nn.Linear`` layers feeding
``fastjl.project_linear``) built on top of it.
"""

from __future__ import annotations

import fnmatch
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch
from torch.func import grad, vmap

from .model_output import ModelOutput


class GradientComputer(ABC):
    """Interface of a gradient path (method names follow TRAK's gradient computers).

    Constructed as ``cls(model=..., task=..., grad_wrt=...)``.
    """

    #: names of the parameters gradients are taken with respect to, in projection order
    param_names: list[str]
    #: total number of entries of those parameters (D)
    num_params: int

    @abstractmethod
    def load_model_params(self, model: torch.nn.Module) -> None:
        """Takes the current weights of ``model`` (called after each checkpoint is loaded)."""

    @abstractmethod
    def compute_per_sample_grad(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: (B, *param.shape)}`` gradients of f for every example of ``batch``."""

    @abstractmethod
    def compute_loss_grad(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B,)`` float: the out-to-loss term Q of every example of ``batch``."""

    def projected_per_sample_grad(self, batch: Sequence[torch.Tensor], projector, model_id: int) -> torch.Tensor:
        """``(B, K)``: the projected gradients ``P_mᵀ ∇θ f`` (not yet scaled by 1/sqrt(D)).

        The featurizer only calls this.  The default materializes the per-parameter gradients
        and lets the projector take them chunk by chunk; a gradient path that can project
        without materializing them (:class:`~trak_core.LinearHooksGradientComputer`) overrides it.
        """
        return projector.project(self.compute_per_sample_grad(batch), model_id=model_id)


def select_parameters(model: torch.nn.Module, grad_wrt: Iterable[str] | None) -> list[str]:
    """Names of the parameters to differentiate: all (``grad_wrt=None``) or the selected ones.

    Each entry of ``grad_wrt`` is a parameter name, a module name (all its parameters), or a
    shell-style pattern (``fnmatch``: ``*``, ``?``, ``[...]``) over either, e.g.
    ``["*.h.1[01].attn.*", "*.h.1[01].mlp.*"]`` for the attention and MLP projections of
    GPT-2 blocks 10 and 11.  A tied weight may be named through any module using it
    (``lm_head.weight`` selects ``transformer.wte.weight``).  Every entry must select
    something.  The order is the model's ``named_parameters()`` order whatever the order of
    ``grad_wrt``, so that the projection (chunk offsets) does not depend on how the user
    listed them.
    """
    names = [name for name, _ in model.named_parameters()]
    if grad_wrt is None:
        return names
    if isinstance(grad_wrt, str):
        raise TypeError(f"grad_wrt must be a list of names or patterns, got the string {grad_wrt!r}")
    canonical = {id(p): n for n, p in model.named_parameters()}
    aliases = [(alias, canonical[id(p)]) for alias, p in model.named_parameters(remove_duplicate=False)]
    wanted = set()
    unknown = []
    for entry in grad_wrt:
        hits = {name for alias, name in aliases if _selects(entry, alias)}
        if not hits:
            unknown.append(entry)
        wanted |= hits
    if unknown:
        raise ValueError(
            f"grad_wrt names parameters or modules the model does not have (no parameter matches): {unknown}; "
            f"its parameters are {names}"
        )
    if not wanted:
        raise ValueError("grad_wrt must name at least one parameter")
    return [name for name in names if name in wanted]


def _selects(entry: str, param_name: str) -> bool:
    """Whether ``entry`` (a name or pattern) selects ``param_name``, itself or through its module."""
    module_name = param_name.rpartition(".")[0]
    return fnmatch.fnmatchcase(param_name, entry) or (bool(module_name) and fnmatch.fnmatchcase(module_name, entry))


def architecture_fingerprint(model: torch.nn.Module, param_names: list[str]) -> str:
    """A short hash of the names and shapes of the differentiated parameters."""
    shapes = dict(model.named_parameters())
    text = ";".join(f"{n}:{tuple(shapes[n].shape)}" for n in param_names)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer value: identifies a checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FunctionalGradientComputer(GradientComputer):
    """Per-example gradients with ``torch.func``: ``vmap(grad(f))`` over the batch, for any module.

    Args:
        model: the module (its weights are read by :meth:`load_model_params`).
        task: the :class:`ModelOutput` (f and Q).
        grad_wrt: parameter names to differentiate (TRAK's ``grad_wrt``); None for all.
            The others are held constant.
    """

    def __init__(self, model: torch.nn.Module, task: ModelOutput, grad_wrt: Iterable[str] | None = None):
        self.model = model
        self.task = task
        self.param_names = select_parameters(model, grad_wrt)
        params = dict(model.named_parameters())
        self.num_params = sum(params[n].numel() for n in self.param_names)
        self.load_model_params(model)

    def load_model_params(self, model: torch.nn.Module) -> None:
        selected = set(self.param_names)
        params = {n: p.detach() for n, p in model.named_parameters()}
        self._weights = {n: params[n] for n in self.param_names}
        self._frozen = {n: p for n, p in params.items() if n not in selected}
        self._buffers = {n: b.detach() for n, b in model.named_buffers()}

    def _output(self, weights: dict, *example) -> torch.Tensor:
        return self.task.get_output(self.model, {**weights, **self._frozen}, self._buffers, *example)

    def compute_per_sample_grad(self, batch):
        in_dims = (None,) + (0,) * len(batch)
        return vmap(grad(self._output), in_dims=in_dims)(self._weights, *batch)

    def compute_loss_grad(self, batch):
        weights = {**self._weights, **self._frozen}
        with torch.no_grad():
            q = self.task.get_out_to_loss_grad(self.model, weights, self._buffers, batch)
        return q.reshape(-1)

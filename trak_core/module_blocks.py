"""Per-module features (``TRAKer(per_module=True)``): one block of ``proj_dim`` columns per module.

A *module* is the owner of a differentiated parameter under the parameter's canonical name,
the one ``model.named_parameters()`` gives it: ``transformer.h.0.attn.c_attn.weight`` and
``.bias`` form module ``transformer.h.0.attn.c_attn``; a weight tied between an embedding and the
output layer belongs to the module that registers it first (GPT-2: ``transformer.wte``, the
lm_head adds nothing of its own); a parameter of the root module belongs to module ``""``.
Modules are ordered by their first parameter in the model's parameter order; module ``i`` owns
columns ``[i·K, (i+1)·K)`` of the ``(n, M·K)`` features.

Module m's block is its term of the whole-model features: the projection of the module's
per-example gradient with the checkpoint's seed at the module's global row offsets (for a dense
kind ``fastjl.project(g_m, K, seed=seed, offset=row_offset_m)``), scaled by ``1/sqrt(D)`` with
D the number of all differentiated parameters.  The blocks therefore add up to the whole-model
features, for every kind: the sparse kinds' block holds the sjlt/GraSS rows of the module's own
parameter rows; with ``proj_kind="kronecker"`` a Linear/Conv1D/embedding module's block is its
LoGra-style Kronecker sketch and every other module's block its dense gaussian projection.
A Linear layer whose bias belongs to another module than its weight (a weight tied to an
embedding plus the head's own bias, as in BERT's MLM head): with the dense and sparse kinds the
bias's term is projected on its own and moved to the bias's block (exact to float32 rounding);
a structured kind (kronecker) sketches ``[W | b]`` jointly, so that whole sketch lands in the
weight's block.

Cost: a featurized batch costs what the whole-model features cost (the same projection calls
on both gradient paths: the parts are placed instead of added); the features hold M·K columns,
so finalizing reads the train gradients once per module and factorizes M (K, K) matrices
(block-diagonal TRAK: each module's block gets its own regularized inverse, see
:mod:`trak_core.finalize`), and scores per module cost M (n, t) arrays.
"""

from __future__ import annotations

import torch

import fastjl

from .gradients import GradientComputer
from .hooked_gradients import LinearHooksGradientComputer
from .projection import projection_options


def module_of(param_name: str) -> str:
    """The module owning a parameter (its canonical name without the last component; ``""``: the root)."""
    return param_name.rpartition(".")[0]


class ModuleColumns:
    """The column map of per-module features: module name -> ``(start, stop)`` columns.

    Args:
        param_names: the differentiated parameters (canonical names) in projection order.
        proj_dim: K, columns per module.
    """

    def __init__(self, param_names: list[str], proj_dim: int):
        self.proj_dim = int(proj_dim)
        self.names: list[str] = list(dict.fromkeys(module_of(n) for n in param_names))
        index = {name: i for i, name in enumerate(self.names)}
        self.index_of_param = {n: index[module_of(n)] for n in param_names}

    @property
    def num_columns(self) -> int:
        return len(self.names) * self.proj_dim

    def columns(self, index: int) -> slice:
        return slice(index * self.proj_dim, (index + 1) * self.proj_dim)

    def to_settings(self) -> tuple[tuple[str, int, int], ...]:
        """The form recorded in the store's settings (``StoreSettings.module_columns``)."""
        return tuple((name, i * self.proj_dim, (i + 1) * self.proj_dim) for i, name in enumerate(self.names))


def column_map(module_columns) -> dict[str, tuple[int, int]] | None:
    """``{module: (start, stop)}`` from ``StoreSettings.module_columns`` (None stays None)."""
    if module_columns is None:
        return None
    return {name: (int(start), int(stop)) for name, start, stop in module_columns}


class PerModuleGradients:
    """A gradient path's rows as per-module blocks: what :class:`~trak_core.featurize.RowWriter`
    calls instead of the gradient computer itself.

    Args:
        computer: the gradient computer (``torch.func`` or hooks path).
        columns: the column map.
        projector: a ``fastjl.Projector`` (blocks are projections at the modules' row offsets).
    """

    def __init__(self, computer: GradientComputer, columns: ModuleColumns, projector):
        if not isinstance(projector, fastjl.Projector):
            raise ValueError(
                "per_module=True projects each module at its own row offsets with fastjl: pass projector=None "
                f"(got a {type(projector).__name__})"
            )
        self.computer = computer
        self.columns = columns
        self.num_params = computer.num_params
        self.param_names = computer.param_names
        sizes = {n: p.numel() for n, p in computer.model.named_parameters()}
        starts = torch.tensor([0] + [sizes[n] for n in self.param_names]).cumsum(0).tolist()
        self.offsets = dict(zip(self.param_names, starts))

    def compute_loss_grad(self, batch) -> torch.Tensor:
        return self.computer.compute_loss_grad(batch)

    def projected_per_sample_grad(self, batch, projector, model_id: int) -> torch.Tensor:
        """``(B, M·K)``: module i's projected gradient in columns ``[i·K, (i+1)·K)`` (unscaled)."""
        seed = projector.seed_for(model_id)
        if isinstance(self.computer, LinearHooksGradientComputer):
            return self._from_parts(batch, projector, seed)
        return self._from_gradients(self.computer.compute_per_sample_grad(batch), projector, seed)

    def _empty(self, like: torch.Tensor, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.columns.num_columns, dtype=torch.float32, device=like.device)

    def _from_gradients(self, grads: dict, projector, seed: int) -> torch.Tensor:
        """Materialized gradients: one projection call per module (its parameters' rows are
        consecutive: a module's own parameters are listed together)."""
        opts = projection_options(projector)
        first = next(iter(grads.values()))
        out = self._empty(first, first.shape[0])
        groups: dict[int, list[str]] = {}
        for name in self.param_names:
            groups.setdefault(self.columns.index_of_param[name], []).append(name)
        for index, names in groups.items():
            flat = torch.cat([grads[n].reshape(first.shape[0], -1) for n in names], dim=1)
            if self.offsets[names[-1]] + grads[names[-1]][0].numel() - self.offsets[names[0]] != flat.shape[1]:
                raise AssertionError(f"the parameters of module {self.columns.names[index]!r} are not consecutive")
            part = fastjl.project(flat, projector.proj_dim, seed=seed, offset=self.offsets[names[0]], **opts)
            out[:, self.columns.columns(index)] += part.float()
        return out

    def _from_parts(self, batch, projector, seed: int) -> torch.Tensor:
        """Hooks path: each projected part (:meth:`LinearHooksGradientComputer.projected_parts`)
        goes into its module's block."""
        out = None
        for names, part, layer, tensors in self.computer.projected_parts(batch, projector, seed):
            if out is None:
                out = self._empty(part, part.shape[0])
            owners = {self.columns.index_of_param[n] for n in names}
            if len(owners) > 1 and self.computer.linear_kind is None:  # structured kinds: joint sketch
                # A head whose (tied) weight and own bias belong to two modules: the bias's
                # term is projected on its own and moved to the bias's block.
                bias_part = self.computer._project_gradients(
                    {layer.bias: layer.per_example_bias_grad(tensors[1])}, projector, seed
                )
                out[:, self.columns.columns(self.columns.index_of_param[layer.bias])] += bias_part
                part = part - bias_part
            out[:, self.columns.columns(self.columns.index_of_param[names[0]])] += part.float()
        return out

"""``TRAKer``: TRAK's front end (constructor arguments and method names of ``trak.TRAKer``).

Switching from TRAK::

    from trak import TRAKer          ->   from trak_core import TRAKer

Differences, all deliberate:

* ``lambda_reg=None`` (the default) selects the regularization of
  :mod:`trak_core.regularization` instead of TRAK's λ = 0, which returns noise once
  ``proj_dim`` >= ``train_set_size``.  Pass ``lambda_reg=0.0`` for TRAK's formula.
* Features are stored in float32 (``use_half_precision`` is accepted and ignored) and
  ``(XᵀX + λI)⁻¹`` is applied through a Cholesky solve in float64 (``xtx_dtype``), without
  TRAK's rescaling of the inverse, so scores differ from traker's by a constant factor per
  checkpoint.
* Projections come from ``fastjl`` (device-independent; TRAK's CUDA projector is not).
* Every step is resumable; ``saver`` and ``score_computer`` cannot be replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch

from fastjl.validation import check_int

from .featurize import RowWriter, indices_for
from .finalize import finalize_model
from .gradient_paths import make_gradient_computer
from .gradients import architecture_fingerprint, weights_fingerprint
from .linalg import DTYPES
from .model_output import resolve_task, task_batch
from .module_blocks import ModuleColumns, PerModuleGradients
from .progress import progress_bar
from .projection import build_projector, projector_description
from .regularization import DEFAULT_LAMBDA_SCALE, check_lambda, describe_lambda
from .scoring import finalize_scores
from .settings import StoreMismatchError, StoreSettings
from .store import Store

logger = logging.getLogger("trak_core")


class TRAKer:
    """Computes TRAK scores ``(train_set_size, num_targets)`` with an on-disk, resumable store.

    Args (TRAK's, in TRAK's order):
        model: the ``nn.Module``; checkpoints are loaded into it with ``load_state_dict``.
        task: ``"image_classification"`` / ``"classification"`` (the margin), or a
            :class:`~trak_core.ModelOutput` (class or instance) for another model output.
        train_set_size: n.
        save_dir: the store directory.
        load_from_save_dir: False deletes an existing store in ``save_dir`` first.
        device: where gradients and linear algebra run; default: the model's device.
        gradient_computer: ``"auto"`` (default): the hooks path
            (:class:`~trak_core.LinearHooksGradientComputer`: ``nn.Linear`` layers projected by
            ``fastjl.project_linear`` without forming per-example gradients, the rest through
            ``torch.func``) when the model has Linear layers and the task defines
            ``get_outputs``, else :class:`~trak_core.FunctionalGradientComputer`; or a
            :class:`~trak_core.GradientComputer` class, built as ``cls(model=, task=, grad_wrt=)``.
        projector: an object with ``.project(grads_dict, model_id) -> (B, K)`` and ``proj_dim``;
            default ``fastjl.Projector(num_params, proj_dim, seed=projector_seed, kind=proj_kind)``.
        saver, score_computer: must be None (the store and the scoring are trak_core's own).
        proj_dim: K.
        logging_level: level of the ``"trak_core"`` logger.
        use_half_precision: ignored (float32 features).
        proj_max_batch_size: at most this many per-example gradients (D floats each) are
            materialized and projected at once; None (default): the whole batch.  Larger is faster
            with fastjl's on-the-fly matrix, which is regenerated at every projection call.
        projector_seed: base seed; checkpoint m uses ``seed + 10^4 m``.
        grad_wrt: names of the parameters to differentiate (default: all).
        lambda_reg: λ >= 0, or None for the default rule (see :mod:`trak_core.regularization`).
    Keyword-only extras:
        lambda_scale: multiplier of the default λ rule.
        proj_kind: ``"rademacher"`` (default) or ``"gaussian"`` (dense, passed to
            ``fastjl.Projector``), or ``"kronecker"``: Linear layers get LoGra-style Kronecker
            projections (needs the hooks path), the other parameters dense gaussian ones; or the
            sparse kinds ``"sjlt"`` (``sparsity`` ±1 per row of P) and ``"grass"`` (GraSS: rows
            kept with probability ``mask_rate``, then sjlt), on either gradient path (the hooks
            path forms a Linear layer's per-example gradient one bounded block at a time for
            them: there is no sparse ``project_linear``).
            ``"factgrass"`` (GraSS's FactGraSS, hooks path only): each Linear/Conv1D/Conv2d layer
            keeps ``factor_masks = (k_out, k_in)`` coordinates of its output and input factors
            (a whole factor if smaller), forms only that part of its gradient and projects it
            with sjlt (``fastjl.project_linear(kind="factgrass")``); an embedding is sketched as
            the (V, d) Linear weight it is (a tied embedding and head: one sketch of their
            summed gradient); the other parameters get plain sjlt.
        sparsity: nonzeros per row of P for ``proj_kind="sjlt"``/``"grass"``/``"factgrass"``: 1
            (default), 2, 4, 8.
        mask_rate: GraSS's keep rate in (0, 1], required by ``proj_kind="grass"`` only.
        factor_masks: ``(k_out, k_in)``, required by ``proj_kind="factgrass"`` only.
        proj_backend: passed to ``fastjl.Projector``.
        xtx_dtype: ``"float64"`` (default) or ``"float32"``: accumulation and solve of ``XᵀX``.
        block_rows: rows streamed at a time through ``XᵀX`` and the solve.
        score_tile: (train rows, targets) per score tile; bounds score memory.
        quiet: no progress bars.
        nonfinite: ``"error"`` (default): a NaN or infinite projected gradient or Q raises
            ``NonFiniteGradientError`` naming the examples and the checkpoint, before anything
            of the batch is stored; ``"zero"``: such examples are stored as zeros, with a warning.
        per_module: one block of ``proj_dim`` columns per module (features ``(n, M·proj_dim)``,
            see :mod:`trak_core.module_blocks`; the column map is :attr:`module_columns`), each
            finalized with its own regularized inverse (block-diagonal TRAK);
            ``finalize_scores(per_module=True)`` then gives each module's scores.  Needs the
            default projector; not on many processes yet.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        task,
        train_set_size: int,
        save_dir: str = "./trak_results",
        load_from_save_dir: bool = True,
        device=None,
        gradient_computer="auto",
        projector=None,
        saver=None,
        score_computer=None,
        proj_dim: int | None = 2048,
        logging_level=logging.INFO,
        use_half_precision: bool = False,
        proj_max_batch_size: int | None = None,
        projector_seed: int = 0,
        grad_wrt: Iterable[str] | None = None,
        lambda_reg: float | None = None,
        *,
        lambda_scale: float = DEFAULT_LAMBDA_SCALE,
        proj_kind: str = "rademacher",
        sparsity: int = 1,
        mask_rate: float | None = None,
        factor_masks: tuple[int, int] | None = None,
        proj_backend: str = "auto",
        xtx_dtype: str = "float64",
        block_rows: int = 8192,
        score_tile: tuple[int, int] = (8192, 4096),
        quiet: bool = False,
        nonfinite: str = "error",
        per_module: bool = False,
    ):
        logger.setLevel(logging_level)
        if saver is not None or score_computer is not None:
            raise ValueError("trak_core uses its own store and scoring: saver and score_computer must be None")
        if use_half_precision:
            logger.info("use_half_precision is ignored: trak_core stores float32 features")
        if xtx_dtype not in DTYPES:
            raise ValueError(f"xtx_dtype must be one of {sorted(DTYPES)}, got {xtx_dtype!r}")
        train_set_size = check_int(train_set_size, "train_set_size", low=1, high=2**62)  # no 1.5 -> 1
        if block_rows < 1 or min(score_tile) < 1:
            raise ValueError("block_rows and score_tile must be positive")
        check_lambda(lambda_reg, lambda_scale)
        if proj_kind in ("kronecker", "factgrass") and projector is not None:
            raise ValueError(f"proj_kind={proj_kind!r} builds its own projections: pass projector=None")

        self.model = model
        self.task = resolve_task(task)
        self.train_set_size = int(train_set_size)
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.gradient_computer = make_gradient_computer(
            gradient_computer, model, self.task, grad_wrt, proj_kind, factor_masks
        )
        self.num_params = self.gradient_computer.num_params
        dense_kind = {"kronecker": "gaussian", "factgrass": "sjlt"}.get(proj_kind, proj_kind)
        if proj_kind == "kronecker" and (sparsity != 1 or mask_rate is not None):
            raise ValueError("sparsity and mask_rate apply to proj_kind='sjlt' or 'grass' only, not 'kronecker'")
        self.projector = build_projector(
            projector, self.num_params, proj_dim, projector_seed, dense_kind, proj_backend, sparsity, mask_rate
        )
        self.proj_dim = int(self.projector.proj_dim)
        self.lambda_reg, self.lambda_scale = lambda_reg, lambda_scale
        self.xtx_dtype = DTYPES[xtx_dtype]
        self.block_rows, self.score_tile, self.quiet = block_rows, tuple(score_tile), quiet
        columns = self._module_columns(per_module)
        rows_from = self.gradient_computer if columns is None else PerModuleGradients(
            self.gradient_computer, columns, self.projector)  # fmt: skip
        num_columns = self.proj_dim if columns is None else columns.num_columns
        self.writer = RowWriter(rows_from, self.projector, proj_max_batch_size, nonfinite, num_columns)

        described = projector_description(self.projector)
        if proj_kind == "kronecker":
            described["kind"] = "kronecker"
        if proj_kind == "factgrass":
            described.update(kind="factgrass", factor_masks=self.gradient_computer.factor_masks)
        settings = StoreSettings(
            train_set_size=self.train_set_size,
            proj_dim=num_columns,
            module_columns=None if columns is None else columns.to_settings(),
            **described,
            dtype="float32",
            xtx_dtype=xtx_dtype,
            num_params=self.num_params,
            model=architecture_fingerprint(model, self.gradient_computer.param_names),
            task=f"{type(self.task).__module__}.{type(self.task).__qualname__}",
            lambda_reg=describe_lambda(lambda_reg, lambda_scale),
        )
        self.save_dir = self._open_store(save_dir, settings, fresh=not load_from_save_dir)
        self.timings: dict[str, float] = {}
        self.scores = None
        self._train = None  # state of the checkpoint being featurized
        self._target = None  # state of the (experiment, checkpoint) being scored
        self._last_ind = 0
        self._last_ind_target = 0

    def __new__(cls, *args, **kwargs):
        # Under torchrun (or on a store a sharded run made) the same call builds the sharded
        # front end: a user's script needs no change (see docs/design.md, many processes).
        if cls is TRAKer:
            from .sharded_traker import ShardedTRAKer, wants_shards

            save_dir = kwargs.get("save_dir", args[3] if len(args) > 3 else "./trak_results")
            if wants_shards(save_dir):
                cls = ShardedTRAKer
        return super().__new__(cls)

    def _module_columns(self, per_module: bool) -> ModuleColumns | None:
        """The column map of per-module features, or None for whole-model features."""
        from .sharded_traker import ShardedTRAKer  # (imports this module)

        if not isinstance(per_module, bool):
            raise TypeError(f"per_module must be True or False, got {per_module!r}")
        if not per_module:
            return None
        if isinstance(self, ShardedTRAKer):
            raise ValueError("per_module=True is not supported on many processes (torchrun) yet")
        return ModuleColumns(self.gradient_computer.param_names, self.proj_dim)

    @property
    def module_columns(self) -> dict[str, tuple[int, int]] | None:
        """Per-module features: ``{module: (start, stop)}``, the feature columns of each module's
        block (also ``trak_core.Store.open(save_dir).module_columns``); None for whole-model features."""
        return self.store.module_columns

    def _open_store(self, save_dir, settings: StoreSettings, fresh: bool):
        """Opens (takes the writer lock of) the store; returns its resolved directory."""
        self.store = Store(save_dir, settings, fresh=fresh)
        return self.store.root

    def close(self) -> None:
        """Releases the store's writer lock (also released when the TRAKer is collected or its process ends).

        While a TRAKer is open, another process opening the same ``save_dir`` gets
        :class:`~trak_core.StoreLockedError`; ``trak_core.Store.open(save_dir)`` still reads it.
        """
        self._close_bar(self._train)
        self._close_bar(self._target)
        self.store.close()

    # ---- featurizing -------------------------------------------------------------------------

    def _load_weights(self, checkpoint) -> str:
        self.model.load_state_dict(checkpoint)
        self.model.eval()
        self.gradient_computer.load_model_params(self.model)
        return weights_fingerprint(self.model)

    def load_checkpoint(self, checkpoint, model_id: int, _allow_featurizing_already_registered: bool = False) -> None:
        """Loads ``checkpoint`` (a state dict) as checkpoint ``model_id`` and prepares its store.

        Resuming: loading a ``model_id`` that is already in the store continues where it
        stopped; the checkpoint must have the same weights (else :class:`StoreMismatchError`).
        """
        model_id = int(model_id)
        self.store.register_model(model_id, self._load_weights(checkpoint))
        self._close_bar(self._train)
        commits = self.store.train_commits(model_id)
        done = commits.num_done()
        self._train = {"model_id": model_id, "commits": commits, "done": done, "seconds": 0.0}
        if done < self.train_set_size:
            self._train["grads"] = self.store.train_grads(model_id)
            self._train["q"] = self.store.out_to_loss(model_id)
            self._train["bar"] = progress_bar(
                total=self.train_set_size,
                initial=done,
                desc=f"featurize model {model_id}",
                quiet=self.quiet,
                unit="ex",
            )
        self._last_ind = 0

    def _train_batch(self, batch, inds, num_samples):
        """``(train state, batch on the device, its store rows)`` for :meth:`featurize`; advances
        the row counter of ``num_samples=`` batches."""
        state = self._train
        if state is None:
            raise RuntimeError("load a checkpoint with load_checkpoint(checkpoint, model_id) before featurize")
        batch = tuple(t.to(self.device) for t in task_batch(self.task, batch))
        rows = indices_for(batch, inds, num_samples, self._last_ind, self.train_set_size, "train")
        if num_samples is not None:
            self._last_ind += int(num_samples)
        return state, batch, rows

    def _target_batch(self, batch, inds, num_samples):
        """As :meth:`_train_batch`, for :meth:`score`'s target rows."""
        state = self._target
        if state is None:
            raise RuntimeError("call start_scoring_checkpoint(exp_name, checkpoint, model_id, num_targets) first")
        batch = tuple(t.to(self.device) for t in task_batch(self.task, batch))
        rows = indices_for(batch, inds, num_samples, self._last_ind_target, state["num_targets"], "target")
        if num_samples is not None:
            self._last_ind_target += int(num_samples)
        return state, batch, rows

    def featurize(self, batch, inds=None, num_samples: int | None = None) -> int:
        """Projected gradients and Q for a batch of train examples (TRAK's ``featurize``).

        Args:
            batch: tuple of tensors ``(inputs, labels, ...)`` with first dimension B (for
                ``task="causal_lm"`` also a dict ``{"input_ids", "attention_mask", "labels"}``).
            inds: the train indices of the batch's examples, or
            num_samples: B, when batches arrive in train order (rows continue after the last).
        Returns:
            The number of examples computed; already finished ones are skipped without computing.
        """
        state, batch, rows = self._train_batch(batch, inds, num_samples)
        if state["done"] == self.train_set_size:
            return 0
        start = time.perf_counter()
        computed = self.writer.write(batch, rows, state["model_id"], state["grads"], state["commits"], state["q"])
        state["seconds"] += time.perf_counter() - start
        state["done"] += computed
        state["bar"].update(computed)
        if state["done"] == self.train_set_size:
            self._complete_featurizing(state)
        return computed

    def _complete_featurizing(self, state) -> None:
        self.store.update_model(state["model_id"], featurized=True)
        self._close_bar(state)
        key = f"featurize model {state['model_id']}"
        self.timings[key] = state["seconds"]
        logger.info("%s: %d examples, %.2f s in this process", key, self.train_set_size, state["seconds"])

    @staticmethod
    def _close_bar(state) -> None:
        if state is not None and "bar" in state:
            state["bar"].close()

    def finalize_features(self, model_ids: Iterable[int] | None = None, del_grads: bool = False) -> None:
        """Computes ``Φ_m (Φ_mᵀΦ_m + λI)⁻¹`` for each checkpoint (default: all in the store).

        Already finalized checkpoints are skipped.  ``del_grads`` deletes the projected
        gradients afterwards (they are not needed for scoring).
        """
        ids = self.store.model_ids() if model_ids is None else [int(m) for m in model_ids]
        for model_id in progress_bar(ids, desc="finalize features", quiet=self.quiet, unit="model"):
            record = self.store.model(model_id)
            if record is None:
                raise ValueError(f"model_id {model_id} is not in the store; featurize it first")
            if record["finalized"]:
                logger.info("model %d already finalized, skipping", model_id)
                continue
            missing = self.train_set_size - self.store.train_commits(model_id).num_done()
            if missing:
                raise ValueError(
                    f"model_id {model_id}: {missing} of {self.train_set_size} train examples not featurized"
                )
            if not record["featurized"]:
                self.store.update_model(model_id, featurized=True)
            start = time.perf_counter()
            finalize_model(
                self.store,
                model_id,
                lambda_reg=self.lambda_reg,
                lambda_scale=self.lambda_scale,
                xtx_dtype=self.xtx_dtype,
                device=self.device,
                block_rows=self.block_rows,
                quiet=self.quiet,
            )
            self.timings[f"finalize model {model_id}"] = time.perf_counter() - start
            if del_grads:
                self.store.delete_train_grads(model_id)

    # ---- scoring -----------------------------------------------------------------------------

    def _check_scoring_checkpoint(self, record, checkpoint, model_id: int) -> None:
        """Loads ``checkpoint`` for scoring ``model_id`` (``record``: the store's entry for it),
        refusing a model that was never featurized or a checkpoint other than the featurized one."""
        if record is None:
            raise ValueError(f"model_id {model_id} is not in the store; featurize and finalize it before scoring")
        if self._load_weights(checkpoint) != record["fingerprint"]:
            raise StoreMismatchError(
                f"the checkpoint given for model_id {model_id} differs from the one it was featurized with"
            )
        self._close_bar(self._target)

    def start_scoring_checkpoint(self, exp_name: str, checkpoint, model_id: int, num_targets: int) -> None:
        """Loads ``checkpoint`` (the one featurized as ``model_id``) to score ``num_targets`` targets."""
        model_id = int(model_id)
        self.store.init_experiment(exp_name, int(num_targets))
        self._check_scoring_checkpoint(self.store.model(model_id), checkpoint, model_id)
        commits = self.store.target_commits(exp_name, model_id)
        self._target = {
            "exp_name": exp_name,
            "model_id": model_id,
            "commits": commits,
            "done": commits.num_done(),
            "grads": self.store.target_grads(exp_name, model_id),
            "num_targets": int(num_targets),
        }
        self._target["bar"] = progress_bar(
            total=num_targets,
            initial=self._target["done"],
            desc=f"score {exp_name} model {model_id}",
            quiet=self.quiet,
            unit="ex",
        )
        self._last_ind_target = 0

    def score(self, batch, inds=None, num_samples: int | None = None) -> int:
        """Projected gradients of a batch of targets (TRAK's ``score``); arguments as in :meth:`featurize`."""
        state, batch, rows = self._target_batch(batch, inds, num_samples)
        computed = self.writer.write(batch, rows, state["model_id"], state["grads"], state["commits"])
        state["done"] += computed
        state["bar"].update(computed)
        if state["done"] == state["num_targets"]:
            state["bar"].close()
        return computed

    def finalize_scores(
        self, exp_name: str, model_ids: Iterable[int] | None = None, allow_skip: bool = False, per_module: bool = False
    ):
        """The scores of experiment ``exp_name``: ``(train_set_size, num_targets)`` float32 memmap.

        Averages over the checkpoints ``model_ids`` (default: all in the store).  A checkpoint
        whose features are not finalized or whose targets are not all scored raises, or is
        skipped with a warning when ``allow_skip``.  ``per_module`` (a ``per_module=True``
        TRAKer): ``{module: (train_set_size, num_targets)}``, each module's scores from its own
        block and regularized inverse; their sum is the whole-model (block-diagonal) scores.
        """
        self._last_ind_target = 0
        record = self.store.experiment(exp_name)
        if record is None:
            raise ValueError(f"experiment {exp_name!r} does not exist; call start_scoring_checkpoint and score first")
        ids = self.store.model_ids() if model_ids is None else [int(m) for m in model_ids]
        usable = []
        for model_id in ids:
            problem = self._scoring_problem(exp_name, model_id, record["num_targets"])
            if problem is None:
                usable.append(model_id)
            elif allow_skip:
                logger.warning("skipping model_id %d: %s", model_id, problem)
            else:
                raise ValueError(f"cannot finalize scores of {exp_name!r}: model_id {model_id}: {problem}")
        if not usable:
            raise ValueError(f"no checkpoint is ready to score experiment {exp_name!r}")
        start = time.perf_counter()
        self.scores = finalize_scores(self.store, exp_name, usable, device=self.device, tile_shape=self.score_tile,
                                      quiet=self.quiet, per_module=per_module)  # fmt: skip
        self.timings[f"finalize scores {exp_name}"] = time.perf_counter() - start
        return self.scores

    def _scoring_problem(self, exp_name: str, model_id: int, num_targets: int) -> str | None:
        record = self.store.model(model_id)
        if record is None:
            return "not in the store"
        if not record["finalized"]:
            return "features not finalized (call finalize_features)"
        missing = num_targets - self.store.target_commits(exp_name, model_id).num_done()
        if missing:
            return f"{missing} of {num_targets} targets not scored"
        return None


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")

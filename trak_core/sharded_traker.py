"""``TRAKer`` on many processes: the same methods over a sharded store (see :mod:`trak_core.shards`).

``TRAKer(...)`` builds this class by itself when ``torch.distributed`` is initialized with more
than one rank, or when ``save_dir`` holds a sharded store; docs/design.md ("trak_core on many
processes") has the design.  Every rank must make the same calls in the same order
(``finalize_features`` and ``finalize_scores`` are collective).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from . import distributed, shards
from .featurize import finite_rows, take_rows
from .finalize import store_xtx, write_features
from .linalg import RegularizedSolver, row_blocks
from .regularization import resolve_lambda
from .scoring import finalize_scores
from .settings import StoreSettings
from .store_errors import StoreError
from .traker import TRAKer

logger = logging.getLogger("trak_core")


def wants_shards(save_dir) -> bool:
    """Whether ``TRAKer(save_dir=...)`` must be sharded: several ranks, or a sharded store there."""
    return distributed.rank_and_world()[1] > 1 or shards.is_sharded(save_dir)


class ShardedTRAKer(TRAKer):
    """:class:`TRAKer` whose rank writes only the shards it owns; arguments as :class:`TRAKer`."""

    def _open_store(self, save_dir, settings: StoreSettings, fresh: bool):
        self.rank, self.world = distributed.rank_and_world()
        root = Path(save_dir).resolve()
        self.store = None  # no single store: self.shards holds this rank's shard stores
        self.shards = {}

        def prepare():
            if self.rank == 0:
                if fresh:
                    shards.clear(root)
                shards.create_manifest(root, settings, self.world)

        def open_owned():
            for s in self.layout.owned(self.rank, self.world):
                self.shards[s] = shards.open_shard(root, self.layout, settings, s)

        self._on_every_rank(prepare, root)  # also the barrier: the manifest is complete before anyone reads it
        self.layout = shards.open_manifest(root, settings)
        self._on_every_rank(open_owned, root)
        logger.info("rank %d of %d writes shards %s of %s", self.rank, self.world, sorted(self.shards), root)
        return root

    def _on_every_rank(self, step, root: Path) -> None:
        """Runs ``step`` on this rank, then fails on every rank if it failed on any.

        A rank that cannot open its shards (e.g. :class:`StoreLockedError`: another job writes
        them) raises its own error; the others raise too instead of going on to write their
        shards and then wait forever in the next collective for the rank that left.
        """
        error = None
        try:
            step()
        except Exception as caught:
            error = caught
        if distributed.any_rank(error is not None, self.device):
            for store in self.shards.values():
                store.close()
            if error is not None:
                raise error
            raise StoreError(f"another rank could not open the sharded store in {root} (its error says why)")

    def close(self) -> None:
        self._close_bar(self._train)
        self._close_bar(self._target)
        for store in self.shards.values():
            store.close()

    def _any_shard(self, shard: int = 0):
        """A store to read records from: an owned shard, else shard ``shard`` read-only."""
        return next(iter(self.shards.values())) if self.shards else shards.read_shard(self.save_dir, self.layout, shard)

    # ---- featurizing -------------------------------------------------------------------------

    def load_checkpoint(self, checkpoint, model_id: int, _allow_featurizing_already_registered: bool = False) -> None:
        model_id = int(model_id)
        fingerprint = self._load_weights(checkpoint)
        self._close_bar(self._train)
        parts = {}
        for s, store in self.shards.items():
            store.register_model(model_id, fingerprint)
            part = {"store": store, "commits": store.train_commits(model_id)}
            part["done"] = part["commits"].num_done()
            part["grads"], part["q"] = store.train_grads(model_id), store.out_to_loss(model_id)
            parts[s] = part
            self._mark_featurized(model_id, part)
        self._train = {"model_id": model_id, "shards": parts, "seconds": 0.0}
        self._last_ind = 0

    def featurize(self, batch, inds=None, num_samples: int | None = None) -> int:
        """As :meth:`TRAKer.featurize`; rows of shards another rank owns are skipped unseen."""
        state, batch, rows = self._train_batch(batch, inds, num_samples)
        start, computed = time.perf_counter(), 0
        owner = self.layout.shard_of(rows)
        for s, part in state["shards"].items():
            mine = owner == s
            if not mine.any() or part["done"] == part["store"].settings.train_set_size:
                continue
            local = self.layout.local(rows[mine])
            count = self.writer.write(
                take_rows(batch, mine), local, state["model_id"], part["grads"], part["commits"], part["q"]
            )
            part["done"] += count
            computed += count
            self._mark_featurized(state["model_id"], part)
        state["seconds"] += time.perf_counter() - start
        return computed

    @staticmethod
    def _mark_featurized(model_id: int, part: dict) -> None:
        store = part["store"]
        if part["done"] == store.settings.train_set_size and not store.model(model_id)["featurized"]:
            store.update_model(model_id, featurized=True)

    def finalize_features(self, model_ids: Iterable[int] | None = None, del_grads: bool = False) -> None:
        """As :meth:`TRAKer.finalize_features`; collective: ``XᵀX`` summed over shards in shard order."""
        ids = self._any_shard().model_ids() if model_ids is None else sorted(int(m) for m in model_ids)
        for model_id in ids:
            for s, store in self.shards.items():
                if store.model(model_id) is None:
                    raise ValueError(f"model_id {model_id} is not in shard {s} of the store; featurize it first")
                missing = store.settings.train_set_size - store.train_commits(model_id).num_done()
                if missing:
                    raise ValueError(
                        f"model_id {model_id}: {missing} train examples of shard {s} (rows i with i % "
                        f"{self.layout.num_shards} == {s}) not featurized; every row must reach the rank that "
                        "owns it (feed all examples, or a DistributedSampler(shuffle=False) share, with inds)"
                    )
                if not store.model(model_id)["featurized"]:
                    store.update_model(model_id, featurized=True)
            todo = [s for s, store in self.shards.items() if not store.model(model_id)["finalized"]]
            if not distributed.any_rank(bool(todo), self.device):
                continue
            start = time.perf_counter()
            partials = {
                s: store_xtx(store, model_id, self.xtx_dtype, self.device, self.block_rows)
                for s, store in self.shards.items()
            }
            like = torch.zeros(self.proj_dim, self.proj_dim, dtype=self.xtx_dtype, device=self.device)
            xtx = distributed.sum_in_shard_order(
                partials, lambda s: self.layout.owner(s, self.world), self.layout.num_shards, like
            )
            lam = resolve_lambda(xtx, self.train_set_size, self.lambda_reg, self.lambda_scale)
            solver = RegularizedSolver(xtx, lam)
            for s in todo:
                write_features(
                    self.shards[s],
                    model_id,
                    solver,
                    lam,
                    xtx,
                    device=self.device,
                    block_rows=self.block_rows,
                    quiet=True,
                )
            self.timings[f"finalize model {model_id}"] = time.perf_counter() - start
        if del_grads:
            distributed.barrier()  # every rank has finalized: nobody needs the gradients again
            for store in self.shards.values():
                for model_id in ids:
                    if not store.model(model_id).get("grads_deleted"):
                        store.delete_train_grads(model_id)

    # ---- scoring -----------------------------------------------------------------------------

    def start_scoring_checkpoint(self, exp_name: str, checkpoint, model_id: int, num_targets: int) -> None:
        model_id = int(model_id)
        self._check_scoring_checkpoint(self._any_shard().model(model_id), checkpoint, model_id)
        parts = {}
        for s, store in self.shards.items():
            store.init_experiment(exp_name, int(num_targets))
            parts[s] = {
                "commits": store.target_commits(exp_name, model_id),
                "grads": store.target_grads(exp_name, model_id),
            }
        self._target = {"exp_name": exp_name, "model_id": model_id, "shards": parts, "num_targets": int(num_targets)}
        self._last_ind_target = 0

    def score(self, batch, inds=None, num_samples: int | None = None) -> int:
        """As :meth:`TRAKer.score`: the rank's target rows go into every shard it owns (any rows:
        ``finalize_scores`` fills each shard's missing ones from the other shards)."""
        state, batch, rows = self._target_batch(batch, inds, num_samples)
        parts = list(state["shards"].values())
        todo = np.zeros(len(rows), dtype=bool)
        for part in parts:
            todo |= ~part["commits"].done(rows)
        if not todo.any():
            return 0
        rows = rows[todo]
        projected = finite_rows(
            self.writer.projected_rows(take_rows(batch, todo), state["model_id"]),
            rows,
            state["model_id"],
            "projected gradients",
            self.writer.nonfinite,
        )
        for part in parts:
            new = ~part["commits"].done(rows)
            part["grads"][rows[new]] = projected[new]
            part["grads"].flush()
            part["commits"].commit(rows[new])  # data first, then the commit
        return len(rows)

    def finalize_scores(self, exp_name: str, model_ids: Iterable[int] | None = None, allow_skip: bool = False):
        """As :meth:`TRAKer.finalize_scores`; collective.  Returns a :class:`~trak_core.shards.ShardedScores`
        (the ``(n, t)`` scores, left sharded on disk; ``np.asarray`` assembles them)."""
        self._last_ind_target = 0
        distributed.barrier()  # every rank has written its target rows
        reference = self._any_shard()
        if reference.experiment(exp_name) is None:
            raise ValueError(f"experiment {exp_name!r} does not exist; call start_scoring_checkpoint and score first")
        ids = reference.model_ids() if model_ids is None else sorted(int(m) for m in model_ids)
        for store in self.shards.values():
            for model_id in ids:
                if store.experiment(exp_name) is not None and model_id in _models_scored(store, exp_name):
                    self._fill_targets(store, exp_name, model_id)
        usable = []
        for model_id in ids:
            problems = [p for p in (self._problem(st, exp_name, model_id) for st in self.shards.values()) if p]
            if not distributed.any_rank(bool(problems), self.device):
                usable.append(model_id)
            elif allow_skip:
                logger.warning("skipping model_id %d: %s", model_id, problems[0] if problems else "not ready on a rank")
            else:
                raise ValueError(
                    f"cannot finalize scores of {exp_name!r}: model_id {model_id}: "
                    + (problems[0] if problems else "not ready on another rank")
                )
        if not usable:
            raise ValueError(f"no checkpoint is ready to score experiment {exp_name!r}")
        start = time.perf_counter()
        for store in self.shards.values():
            finalize_scores(store, exp_name, usable, device=self.device, tile_shape=self.score_tile, quiet=self.quiet)
        distributed.barrier()  # every shard's scores are complete before anyone reads them
        self.scores = shards.ShardedScores(self.save_dir, exp_name)
        self.timings[f"finalize scores {exp_name}"] = time.perf_counter() - start
        return self.scores

    def _fill_targets(self, store, exp_name: str, model_id: int) -> None:
        """Copies the target rows ``store`` lacks from the other shards (committed rows only)."""
        commits = store.target_commits(exp_name, model_id)
        if commits.all_done():
            return
        grads = store.target_grads(exp_name, model_id)
        for other in range(self.layout.num_shards):
            source = shards.read_shard(self.save_dir, self.layout, other)
            if source.root == store.root or source.experiment(exp_name) is None:
                continue
            try:
                theirs = source.target_commits(exp_name, model_id, mode="r").done()
            except FileNotFoundError:
                continue
            wanted = np.flatnonzero(theirs & ~commits.done())
            if not len(wanted):
                continue
            their_grads = source.target_grads(exp_name, model_id, mode="r")
            for start, stop in row_blocks(len(wanted), 4096):  # bounded memory
                rows = wanted[start:stop]
                grads[rows] = their_grads[rows]
                grads.flush()
                commits.commit(rows)

    def _problem(self, store, exp_name: str, model_id: int) -> str | None:
        record = store.model(model_id)
        if record is None:
            return "not in the store"
        if not record["finalized"]:
            return "features not finalized (call finalize_features)"
        num_targets = store.experiment(exp_name)["num_targets"]
        missing = num_targets - store.target_commits(exp_name, model_id).num_done()
        if missing:
            return f"{missing} of {num_targets} targets not scored on any rank"
        return None


def _models_scored(store, exp_name: str) -> list[int]:
    """Checkpoints with a target folder in experiment ``exp_name`` of ``store``."""
    folder = store.root / "experiments" / exp_name
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []

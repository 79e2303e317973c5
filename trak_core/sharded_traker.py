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

from . import distributed, shard_inboxes, shards
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
        self.inboxes = {}  # class c mod L -> the inbox store of rows this rank computes for another's shard
        self.settings = settings

        def prepare():
            if self.rank == 0:
                if fresh:
                    shards.clear(root)
                shards.create_manifest(root, settings, self.world)

        def open_owned():
            for s in self.layout.owned(self.rank, self.world):
                self.shards[s] = shards.open_shard(root, self.layout, settings, s)
            for c in self.classes:
                if c % self.layout.num_shards not in self.shards:
                    self.inboxes[c] = shard_inboxes.open_inbox(root, self.layout, settings, c, self.period)

        self._on_every_rank(prepare, root)  # also the barrier: the manifest is complete before anyone reads it
        self.layout = shards.open_manifest(root, settings)
        self.period, self.classes = shard_inboxes.classes(self.layout, self.rank, self.world)
        self._on_every_rank(open_owned, root)
        logger.info(
            "rank %d of %d writes shards %s of %s (and inboxes %s of %d)",
            self.rank, self.world, sorted(self.shards), root, sorted(self.inboxes), self.period,
        )  # fmt: skip
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
            self._close_stores()
            if error is not None:
                raise error
            raise StoreError(f"another rank could not open the sharded store in {root} (its error says why)")

    def close(self) -> None:
        self._close_bar(self._train)
        self._close_bar(self._target)
        self._close_stores()

    def _close_stores(self) -> None:
        for store in [*self.shards.values(), *self.inboxes.values()]:
            store.close()

    def _any_shard(self, shard: int = 0):
        """A store to read records from: an owned shard, else shard ``shard`` read-only."""
        return next(iter(self.shards.values())) if self.shards else shards.read_shard(self.save_dir, self.layout, shard)

    # ---- featurizing -------------------------------------------------------------------------

    def load_checkpoint(self, checkpoint, model_id: int, _allow_featurizing_already_registered: bool = False) -> None:
        model_id = int(model_id)
        fingerprint = self._load_weights(checkpoint)
        self._close_bar(self._train)
        parts, targets = {}, {}
        for s, store in self.shards.items():
            parts[s] = self._train_part(store, model_id, fingerprint, local=self.layout.local)
            self._mark_featurized(model_id, parts[s])
        for c in self.classes:  # each class of rows this rank computes: into its shard, or an inbox
            if c in self.inboxes:
                local = lambda rows: rows // self.period  # noqa: E731
                targets[c] = self._train_part(self.inboxes[c], model_id, fingerprint, local=local)
            else:
                targets[c] = parts[c % self.layout.num_shards]
        # Rows this rank computes that an earlier job (with another number of ranks) committed
        # elsewhere: in their shard, or in an inbox of it.  A snapshot is enough: in this job no
        # other rank computes these rows, so nobody commits them but this rank.
        elsewhere = {}
        for s in sorted({c % self.layout.num_shards for c in self.classes}):
            elsewhere[s] = shard_inboxes.done_in_inboxes(
                self.save_dir, self.layout, self.settings, s, model_id, fingerprint
            )
            if s not in self.shards:
                elsewhere[s] |= self._committed_in_shard(s, model_id)
        self._train = {
            "model_id": model_id, "shards": parts, "classes": targets, "elsewhere": elsewhere, "seconds": 0.0
        }  # fmt: skip
        self._last_ind = 0

    @staticmethod
    def _train_part(store, model_id: int, fingerprint: str, local) -> dict:
        """What featurizing ``model_id`` into ``store`` (a shard or an inbox) writes to."""
        store.register_model(model_id, fingerprint)
        part = {"store": store, "commits": store.train_commits(model_id), "local": local}
        part["done"] = part["commits"].num_done()
        part["grads"], part["q"] = store.train_grads(model_id), store.out_to_loss(model_id)
        return part

    def _committed_in_shard(self, s: int, model_id: int) -> np.ndarray:
        """Rows of shard ``s`` (another rank's) committed for ``model_id``, read without its lock."""
        try:
            return shards.read_shard(self.save_dir, self.layout, s).train_commits(model_id, mode="r").done()
        except (FileNotFoundError, StoreError):  # never featurized there
            return np.zeros(self.layout.size(s), dtype=bool)

    def featurize(self, batch, inds=None, num_samples: int | None = None) -> int:
        """As :meth:`TRAKer.featurize`; this rank computes the rows ``i ≡ rank (mod world)`` and
        skips the others unseen (another rank is fed them: see :mod:`trak_core.shard_inboxes`)."""
        state, batch, rows = self._train_batch(batch, inds, num_samples)
        start, computed = time.perf_counter(), 0
        period = self.period
        for c, part in state["classes"].items():
            mine = rows % period == c
            if not mine.any() or part["done"] == part["store"].settings.train_set_size:
                continue
            s = c % self.layout.num_shards
            mine[mine] = ~state["elsewhere"][s][self.layout.local(rows[mine])]
            if not mine.any():
                continue
            count = self.writer.write(
                take_rows(batch, mine), part["local"](rows[mine]), state["model_id"], part["grads"],
                part["commits"], part["q"],
            )  # fmt: skip
            part["done"] += count
            computed += count
            if s in self.shards:
                self._mark_featurized(state["model_id"], part)
        state["seconds"] += time.perf_counter() - start
        return computed

    @staticmethod
    def _mark_featurized(model_id: int, part: dict) -> None:
        store = part["store"]
        if part["done"] == store.settings.train_set_size and not store.model(model_id)["featurized"]:
            store.update_model(model_id, featurized=True)

    def finalize_features(self, model_ids: Iterable[int] | None = None, del_grads: bool = False) -> None:
        """As :meth:`TRAKer.finalize_features`; collective: each shard's owner first copies in the
        rows other ranks computed for it (their inboxes), then ``XᵀX`` is summed in shard order."""
        distributed.barrier()  # every rank has featurized: nobody writes an inbox any more
        ids = self._any_shard().model_ids() if model_ids is None else sorted(int(m) for m in model_ids)
        for model_id in ids:
            for s, store in self.shards.items():
                if store.model(model_id) is None:
                    raise ValueError(f"model_id {model_id} is not in shard {s} of the store; featurize it first")
                shard_inboxes.merge(self.save_dir, self.layout, self.settings, store, s, model_id)
                missing = store.settings.train_set_size - store.train_commits(model_id).num_done()
                if missing:
                    raise ValueError(
                        f"model_id {model_id}: {missing} train examples of shard {s} (rows i with i % "
                        f"{self.layout.num_shards} == {s}) not featurized; rank r of W computes the rows "
                        "i ≡ r (mod W): feed every rank all examples, or its DistributedSampler(shuffle=False) "
                        "share, with inds"
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
            for store in [*self.shards.values(), *self.inboxes.values()]:
                for model_id in ids:
                    record = store.model(model_id)
                    if record is not None and not record.get("grads_deleted"):
                        store.delete_train_grads(model_id)

    # ---- scoring -----------------------------------------------------------------------------

    def start_scoring_checkpoint(self, exp_name: str, checkpoint, model_id: int, num_targets: int) -> None:
        model_id = int(model_id)
        self._check_scoring_checkpoint(self._any_shard().model(model_id), checkpoint, model_id)
        parts = {}
        # A rank that owns no shard (more ranks than shards) keeps its target rows in an inbox of
        # its own, which finalize_scores reads like a shard's.
        homes = self.shards or dict(list(self.inboxes.items())[:1])
        for s, store in homes.items():
            store.init_experiment(exp_name, int(num_targets))
            parts[s] = {
                "commits": store.target_commits(exp_name, model_id),
                "grads": store.target_grads(exp_name, model_id),
            }
        self._target = {"exp_name": exp_name, "model_id": model_id, "shards": parts, "num_targets": int(num_targets)}
        self._last_ind_target = 0

    def score(self, batch, inds=None, num_samples: int | None = None) -> int:
        """As :meth:`TRAKer.score`: the rank's target rows go into every shard it owns (any rows:
        ``finalize_scores`` fills each shard's missing ones from the other shards and inboxes); a
        rank that owns no shard keeps the rows ``j ≡ rank (mod world)`` in its inbox."""
        state, batch, rows = self._target_batch(batch, inds, num_samples)
        parts = list(state["shards"].values())
        if not self.shards:  # into an inbox: only the rows i ≡ rank (mod world), as for train rows
            keep = rows % self.world == self.rank
            batch, rows = take_rows(batch, keep), rows[keep]
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
        sources = []
        for other in range(self.layout.num_shards):
            sources.append(shards.read_shard(self.save_dir, self.layout, other))
            sources.extend(inbox for _, _, inbox in shard_inboxes.inboxes(self.save_dir, self.layout, other))
        for source in sources:
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

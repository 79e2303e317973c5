"""The on-disk store: a directory of ``.npy`` memmaps plus ``metadata.json``.

Layout (n train examples, t targets, K projected dimensions)::

    save_dir/
      metadata.json                      settings, checkpoints, experiments (replaced atomically)
      models/<id>/grads.npy              (n, K) float32   projected, scaled train gradients
      models/<id>/out_to_loss.npy        (n,)   float32   Q per train example
      models/<id>/featurized.npy         (n,)   uint8     commit counts of the rows above
      models/<id>/features.npy           (n, K) float32   finalized features Φ (ΦᵀΦ + λI)⁻¹
      experiments/<name>/<id>/grads.npy  (t, K) float32   projected, scaled target gradients
      experiments/<name>/<id>/scored.npy (t,)   uint8     commit counts of those rows
      experiments/<name>/scores.npy      (n, t) float32   final scores, written tile by tile
      experiments/<name>/tiles.npy       (R, C) uint8     commit counts of the score tiles

What is finished is recorded by the commit counts (see :class:`CommitCounts`); the flags in
``metadata.json`` are written after them and only summarize.  One process writes a store at a
time.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np

from .atomic_files import open_npy, read_json, write_json_atomic
from .commit_counts import CommitCounts
from .settings import StoreMismatchError, StoreSettings

FORMAT = "trak_core.store"
VERSION = 1
METADATA = "metadata.json"
FEATURE_DTYPE = np.float32

logger = logging.getLogger("trak_core")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class Store:
    """A TRAK store bound to one set of :class:`StoreSettings`.

    Args:
        root: the directory (created if missing).
        settings: the settings of the caller; an existing store with other settings is refused
            with :class:`StoreMismatchError` naming every difference.
        fresh: delete an existing store in ``root`` first (TRAK's ``load_from_save_dir=False``).
    """

    def __init__(self, root, settings: StoreSettings, *, fresh: bool = False):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        if fresh:
            self._clear()
        path = self.root / METADATA
        if path.exists():
            self.metadata = _load_metadata(path)
            stored = StoreSettings.from_json(self.metadata["settings"])
            problems = settings.mismatches(stored)
            if problems:
                raise StoreMismatchError(
                    f"the store in {self.root} was created with other settings: "
                    + "; ".join(problems)
                    + ". Use another save_dir, or the settings the store was made with."
                )
        else:
            self.metadata = {
                "format": FORMAT,
                "version": VERSION,
                "settings": settings.to_json(),
                "models": {},
                "experiments": {},
            }
            self.save()
        self.settings = settings

    @classmethod
    def open(cls, root) -> Store:
        """Opens an existing store with the settings it was made with (for inspection)."""
        path = Path(root) / METADATA
        if not path.exists():
            raise FileNotFoundError(f"no trak_core store in {root} ({METADATA} is missing)")
        return cls(root, StoreSettings.from_json(_load_metadata(path)["settings"]))

    def save(self) -> None:
        write_json_atomic(self.root / METADATA, self.metadata)

    def _clear(self) -> None:
        # Only what a store consists of is removed, never anything else a user keeps there.
        for name in ("models", "experiments"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        (self.root / METADATA).unlink(missing_ok=True)

    # ---- checkpoints (model ids) -------------------------------------------------------------

    def model(self, model_id: int) -> dict | None:
        """The metadata record of a checkpoint, or None if it was never registered."""
        return self.metadata["models"].get(str(int(model_id)))

    def model_ids(self) -> list[int]:
        return sorted(int(k) for k in self.metadata["models"])

    def register_model(self, model_id: int, fingerprint: str) -> dict:
        """Registers checkpoint ``model_id``, or checks that it is the one registered before.

        Raises:
            StoreMismatchError: ``model_id`` was featurized from a checkpoint with other weights.
        """
        record = self.model(model_id)
        if record is None:
            record = {"fingerprint": fingerprint, "featurized": False, "finalized": False}
            self.metadata["models"][str(int(model_id))] = record
            self.save()
        elif record["fingerprint"] != fingerprint:
            raise StoreMismatchError(
                f"model_id {model_id} in {self.root} was featurized from a checkpoint with other weights; "
                "use a new model_id or another save_dir"
            )
        return record

    def update_model(self, model_id: int, **fields) -> None:
        self.metadata["models"][str(int(model_id))].update(fields)
        self.save()

    def _model_dir(self, model_id: int) -> Path:
        return self.root / "models" / str(int(model_id))

    def train_grads(self, model_id: int, mode: str = "r+") -> np.memmap:
        """``(n, K)`` float32: projected train gradients scaled by 1/sqrt(num_params)."""
        s = self.settings
        return open_npy(self._model_dir(model_id) / "grads.npy", (s.train_set_size, s.proj_dim), FEATURE_DTYPE, mode)

    def out_to_loss(self, model_id: int, mode: str = "r+") -> np.memmap:
        """``(n,)`` float32: Q = 1 - p(correct class) of every train example."""
        return open_npy(
            self._model_dir(model_id) / "out_to_loss.npy", (self.settings.train_set_size,), np.float32, mode
        )

    def train_commits(self, model_id: int, mode: str = "r+") -> CommitCounts:
        """Commit counts of the train rows of checkpoint ``model_id``, shape ``(n,)``."""
        return CommitCounts(self._model_dir(model_id) / "featurized.npy", self.settings.train_set_size, mode)

    def features(self, model_id: int, mode: str = "r+") -> np.memmap:
        """``(n, K)`` float32: finalized features Φ (ΦᵀΦ + λI)⁻¹."""
        s = self.settings
        return open_npy(self._model_dir(model_id) / "features.npy", (s.train_set_size, s.proj_dim), FEATURE_DTYPE, mode)

    def delete_train_grads(self, model_id: int) -> None:
        (self._model_dir(model_id) / "grads.npy").unlink(missing_ok=True)
        self.update_model(model_id, grads_deleted=True)

    # ---- experiments (sets of targets) ------------------------------------------------------

    def experiment(self, name: str) -> dict | None:
        return self.metadata["experiments"].get(name)

    def init_experiment(self, name: str, num_targets: int) -> dict:
        """Creates experiment ``name`` for ``num_targets`` targets, or checks the existing one."""
        if not _SAFE_NAME.match(name):
            raise ValueError(f"exp_name must use letters, digits, '_', '-' or '.', got {name!r}")
        record = self.experiment(name)
        if record is None:
            record = {"num_targets": int(num_targets), "models": {}, "scores": None}
            self.metadata["experiments"][name] = record
            self.save()
        elif record["num_targets"] != num_targets:
            raise StoreMismatchError(
                f"experiment {name!r} in {self.root} has num_targets={record['num_targets']}, "
                f"requested {num_targets}; use another exp_name"
            )
        return record

    def update_experiment(self, name: str, **fields) -> None:
        self.metadata["experiments"][name].update(fields)
        self.save()

    def _experiment_dir(self, name: str) -> Path:
        return self.root / "experiments" / name

    def target_grads(self, name: str, model_id: int, mode: str = "r+") -> np.memmap:
        """``(t, K)`` float32: projected target gradients of checkpoint ``model_id``, scaled."""
        shape = (self.experiment(name)["num_targets"], self.settings.proj_dim)
        return open_npy(self._experiment_dir(name) / str(int(model_id)) / "grads.npy", shape, FEATURE_DTYPE, mode)

    def target_commits(self, name: str, model_id: int, mode: str = "r+") -> CommitCounts:
        """Commit counts of the target rows of experiment ``name`` for checkpoint ``model_id``."""
        path = self._experiment_dir(name) / str(int(model_id)) / "scored.npy"
        return CommitCounts(path, self.experiment(name)["num_targets"], mode)

    def scores(self, name: str, mode: str = "r+") -> np.memmap:
        """``(n, t)`` float32: the final scores of experiment ``name``."""
        shape = (self.settings.train_set_size, self.experiment(name)["num_targets"])
        return open_npy(self._experiment_dir(name) / "scores.npy", shape, np.float32, mode)

    def tile_commits(self, name: str, grid: tuple[int, int], mode: str = "r+") -> CommitCounts:
        """Commit counts of the score tiles of experiment ``name``, shape ``grid``."""
        return CommitCounts(self._experiment_dir(name) / "tiles.npy", grid, mode)

    def delete_tiles(self, name: str) -> None:
        (self._experiment_dir(name) / "tiles.npy").unlink(missing_ok=True)


def _load_metadata(path: Path) -> dict:
    metadata = read_json(path)
    if metadata.get("format") != FORMAT:
        raise StoreMismatchError(f"{path} is not a trak_core store (format {metadata.get('format')!r})")
    if metadata.get("version") != VERSION:
        raise StoreMismatchError(f"{path} has store version {metadata.get('version')}, this trak_core reads {VERSION}")
    return metadata

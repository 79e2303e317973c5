"""The on-disk store: a directory of ``.npy`` memmaps plus ``metadata.json``.

Layout (n train examples, t targets, K projected dimensions)::

    save_dir/
      metadata.json                      settings, checkpoints, experiments (replaced atomically)
      writer.lock                        flock of the one process writing the store (pid, host, start)
      models/<id>/grads.npy              (n, K) float32   projected, scaled train gradients
      models/<id>/out_to_loss.npy        (n,)   float32   Q per train example
      models/<id>/featurized.npy         (n,)   uint8     commit counts of the rows above
      models/<id>/features.npy           (n, K) float32   finalized features Φ (ΦᵀΦ + λI)⁻¹
      experiments/<name>/<id>/grads.npy  (t, K) float32   projected, scaled target gradients
      experiments/<name>/<id>/scored.npy (t,)   uint8     commit counts of those rows
      experiments/<name>/scores.npy      (n, t) float32   final scores, written tile by tile
      experiments/<name>/tiles.npy       (R, C) uint8     commit counts of the score tiles
      experiments/<name>/module_scores.npy  (M, n, t) float32  per-module scores (per-module stores)
      experiments/<name>/module_tiles.npy   (M, R, C) uint8    commit counts of their tiles

Per-module stores (``settings.module_columns``, see :mod:`trak_core.module_blocks`) have
K = M·K_module columns, module i's block in the columns the settings record.

What is finished is recorded by the commit counts (see :class:`CommitCounts`); the flags in
``metadata.json`` are written after them and only summarize.

Integrity: one process writes a store at a time (``writer.lock``, see :mod:`trak_core.store_lock`);
every array is verified when opened (header, shape, dtype and size against the metadata, see
:func:`~trak_core.atomic_files.open_npy`); a file that holds committed data (per the commit counts
or the metadata) and is missing or damaged raises :class:`StoreError` naming it and what to do,
and only files nothing was committed to are ever created.  A store with data files but no
``metadata.json`` is refused rather than started over.
"""

from __future__ import annotations

import logging
import re
import shutil
import weakref
from pathlib import Path

import numpy as np

from .atomic_files import open_npy, read_json, write_json_atomic
from .commit_counts import CommitCounts
from .module_blocks import column_map
from .settings import StoreMismatchError, StoreSettings
from .store_errors import StoreDamagedError, StoreError, StoreMissingFileError
from .store_lock import WriterLock

FORMAT = "trak_core.store"
VERSION = 1
METADATA = "metadata.json"
FEATURE_DTYPE = np.float32

logger = logging.getLogger("trak_core")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Experiment record key, data file and tile commit file of the whole-model and per-module scores.
_SCORE_FILES = {
    False: ("scores", "scores.npy", "tiles.npy"),
    True: ("module_scores", "module_scores.npy", "module_tiles.npy"),
}


class Store:
    """A TRAK store bound to one set of :class:`StoreSettings`.

    Args:
        root: the directory (created if missing).
        settings: the settings of the caller; an existing store with other settings is refused
            with :class:`StoreMismatchError` naming every difference.
        fresh: delete an existing store in ``root`` first (TRAK's ``load_from_save_dir=False``).
        read_only: inspect only (see :meth:`open`): no lock, nothing created or written.

    A writable store holds the writer lock of ``root`` until :meth:`close` (or until it is
    garbage collected, or the process ends); a second process gets :class:`StoreLockedError`.

    Raises:
        StoreError: the store is locked by another process, its metadata is missing or damaged.
    """

    def __init__(self, root, settings: StoreSettings, *, fresh: bool = False, read_only: bool = False):
        self.root = Path(root).resolve()
        self.read_only = read_only
        self._lock = None
        if read_only:
            if fresh:
                raise ValueError("a read-only store cannot start fresh")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.root)
            self._release = weakref.finalize(self, self._lock.release)
        try:
            self._open_metadata(settings, fresh)
        except BaseException:
            self.close()
            raise
        self.settings = settings

    def _open_metadata(self, settings: StoreSettings, fresh: bool) -> None:
        if fresh:
            self._clear()
        if not self.read_only:
            self._remove_stale_temporaries()
        path = self.root / METADATA
        if path.exists():
            self.metadata = _load_metadata(path)
            stored = _settings_from(self.metadata, path)
            problems = settings.mismatches(stored)
            if problems:
                raise StoreMismatchError(
                    f"the store in {self.root} was created with other settings: "
                    + "; ".join(problems)
                    + ". Use another save_dir, or the settings the store was made with."
                )
        elif self.read_only:
            raise FileNotFoundError(f"no trak_core store in {self.root} ({METADATA} is missing)")
        else:
            data = self._data_files()
            if data:
                raise StoreMissingFileError(
                    f"the store in {self.root} has data files ({', '.join(data)}) but no {METADATA}, which "
                    "records its settings and which rows are finished; its data cannot be checked or reused. "
                    f"Restore {METADATA} if you have a copy; otherwise start over with load_from_save_dir=False "
                    f"(deletes the store's models/ and experiments/ folders) or another save_dir."
                )
            self.metadata = {
                "format": FORMAT,
                "version": VERSION,
                "settings": settings.to_json(),
                "models": {},
                "experiments": {},
            }
            self.save()

    def _remove_stale_temporaries(self) -> None:
        """Deletes the temporary files of creations a killed writer left (arrays are preallocated: not free).

        Safe because this process holds the writer lock: nobody else is creating files here.
        """
        for pattern in (
            f".{METADATA}.*.tmp",
            "models/*/.*.npy.*.tmp",
            "experiments/*/.*.npy.*.tmp",
            "experiments/*/*/.*.npy.*.tmp",
        ):
            for path in self.root.glob(pattern):
                path.unlink(missing_ok=True)

    def _data_files(self, limit: int = 3) -> list[str]:
        """Up to ``limit`` files under ``models/`` and ``experiments/`` (relative paths)."""
        found = []
        for name in ("models", "experiments"):
            for path in sorted((self.root / name).rglob("*")) if (self.root / name).is_dir() else ():
                if path.is_file():
                    found.append(str(path.relative_to(self.root)))
                    if len(found) == limit:
                        return found
        return found

    @classmethod
    def open(cls, root) -> Store:
        """Opens an existing store read-only, with the settings it was made with (for inspection).

        Takes no lock, so it works while another process writes the store; opening an array
        with ``mode="r+"`` or saving raises :class:`StoreError`.
        """
        path = Path(root) / METADATA
        if not path.exists():
            raise FileNotFoundError(f"no trak_core store in {root} ({METADATA} is missing)")
        return cls(root, _settings_from(_load_metadata(path), path), read_only=True)

    @property
    def module_columns(self) -> dict[str, tuple[int, int]] | None:
        """Per-module stores: ``{module: (start, stop)}`` columns of each module's block; else None."""
        return column_map(self.settings.module_columns)

    def close(self) -> None:
        """Releases the writer lock (idempotent); the store must not be written afterwards."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"{what}: the store in {self.root} was opened read-only (Store.open)")
        if not self._lock.held():
            raise StoreError(
                f"{what}: this Store of {self.root} no longer holds the writer lock (closed, or inherited "
                "through fork); open the store again in this process"
            )

    def save(self) -> None:
        self._check_writable(f"cannot write {METADATA}")
        write_json_atomic(self.root / METADATA, self.metadata)

    def _clear(self) -> None:
        # Only what a store consists of is removed, never anything else a user keeps there.  The
        # metadata goes first: a kill half-way leaves data without metadata, which is refused.
        self._check_writable("cannot clear the store")
        (self.root / METADATA).unlink(missing_ok=True)
        for name in ("models", "experiments"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def _check_openable(self, path: Path, mode: str, committed: str | None, advice: str) -> None:
        """Writable for ``"r+"``; present if ``committed`` says why it must exist (None: nothing
        committed to it yet, so it may be created)."""
        if mode != "r":
            self._check_writable(f"cannot open {path} for writing")
        if committed is not None and not path.exists():
            raise StoreMissingFileError(f"{path} is missing, but {committed}. {advice}")

    def _array(self, path: Path, shape, dtype, mode: str, committed: str | None, advice: str) -> np.memmap:
        """Opens a data array; ``committed`` says why it must exist (None: nothing committed yet)."""
        self._check_openable(path, mode, committed, advice)
        return open_npy(path, shape, dtype, mode, advice=advice)

    def _commits(self, path: Path, shape, mode: str, committed: str | None, advice: str) -> CommitCounts:
        self._check_openable(path, mode, committed, advice)
        try:
            return CommitCounts(path, shape, mode)
        except StoreDamagedError as error:
            raise StoreDamagedError(f"{error}. {advice}") from None

    def _any_committed(self, path: Path, shape) -> bool:
        """Whether the commit counts at ``path`` record any finished unit (False if missing)."""
        if not path.exists():
            return False
        return open_npy(path, shape, np.uint8, "r").any()

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

    def _model_advice(self, model_id: int) -> str:
        return (
            f"Its data cannot be trusted: to featurize checkpoint {int(model_id)} again, run "
            f"trak_core.Store.forget_checkpoint({str(self.root)!r}, {int(model_id)}) (deletes its files and "
            "records) and rerun; or start over with load_from_save_dir=False"
        )

    def _train_rows_committed(self, model_id: int) -> str | None:
        """Why the train arrays of ``model_id`` must exist (None: nothing committed to them yet)."""
        record = self.model(model_id)
        if record is not None and record["featurized"]:
            return f"{METADATA} records checkpoint {int(model_id)} as featurized"
        path = self._model_dir(model_id) / "featurized.npy"
        try:
            done = int(np.count_nonzero(open_npy(path, (self.settings.train_set_size,), np.uint8, "r")))
        except FileNotFoundError:
            return None
        except StoreDamagedError as error:
            raise StoreDamagedError(f"{error}. {self._model_advice(model_id)}") from None
        return f"{path} records {done} finished rows in it" if done else None

    def train_grads(self, model_id: int, mode: str = "r+") -> np.memmap:
        """``(n, K)`` float32: projected train gradients scaled by 1/sqrt(num_params)."""
        s = self.settings
        record = self.model(model_id)
        if record is not None and record.get("grads_deleted"):
            raise StoreMissingFileError(
                f"the train gradients of checkpoint {int(model_id)} in {self.root} were deleted by "
                "finalize_features(del_grads=True); featurize the checkpoint again in a new store to get them"
            )
        return self._array(
            self._model_dir(model_id) / "grads.npy",
            (s.train_set_size, s.proj_dim),
            FEATURE_DTYPE,
            mode,
            self._train_rows_committed(model_id),
            self._model_advice(model_id),
        )

    def out_to_loss(self, model_id: int, mode: str = "r+") -> np.memmap:
        """``(n,)`` float32: Q = 1 - p(correct class) of every train example."""
        return self._array(
            self._model_dir(model_id) / "out_to_loss.npy",
            (self.settings.train_set_size,),
            np.float32,
            mode,
            self._train_rows_committed(model_id),
            self._model_advice(model_id),
        )

    def train_commits(self, model_id: int, mode: str = "r+") -> CommitCounts:
        """Commit counts of the train rows of checkpoint ``model_id``, shape ``(n,)``."""
        record = self.model(model_id)
        committed = record is not None and record["featurized"]
        return self._commits(
            self._model_dir(model_id) / "featurized.npy",
            self.settings.train_set_size,
            mode,
            f"{METADATA} records checkpoint {int(model_id)} as featurized" if committed else None,
            self._model_advice(model_id),
        )

    def features(self, model_id: int, mode: str = "r+") -> np.memmap:
        """``(n, K)`` float32: finalized features Φ (ΦᵀΦ + λI)⁻¹."""
        s = self.settings
        record = self.model(model_id)
        committed = record is not None and record["finalized"]
        return self._array(
            self._model_dir(model_id) / "features.npy",
            (s.train_set_size, s.proj_dim),
            FEATURE_DTYPE,
            mode,
            f"{METADATA} records checkpoint {int(model_id)} as finalized" if committed else None,
            self._model_advice(model_id),
        )

    def delete_train_grads(self, model_id: int) -> None:
        self._check_writable("cannot delete train gradients")
        # Recorded first: a kill in between leaves a recorded deletion, never a silently missing file.
        self.update_model(model_id, grads_deleted=True)
        (self._model_dir(model_id) / "grads.npy").unlink(missing_ok=True)

    @classmethod
    def forget_checkpoint(cls, root, model_id: int) -> None:
        """Deletes checkpoint ``model_id``'s files and records from the store in ``root``.

        The way out of a damaged or missing file of a checkpoint: rerunning featurizes (and
        scores) that checkpoint again; scores that used it are recomputed.  Takes the writer lock;
        call it with no ``TRAKer`` open on the store.
        """
        path = Path(root) / METADATA
        with cls(root, _settings_from(_load_metadata(path), path)) as store:
            model_id = int(model_id)
            # Files first, records last: a kill in between leaves records of missing files (an
            # error naming them; run this again), never unrecorded rows that would be reused.
            for name, record in store.metadata["experiments"].items():
                shutil.rmtree(store._experiment_dir(name) / str(model_id), ignore_errors=True)
                for per_module, (key, _, _) in _SCORE_FILES.items():
                    if record.get(key) is not None and model_id in record[key]["model_ids"]:
                        store.delete_tiles(name, per_module=per_module)
            shutil.rmtree(store._model_dir(model_id), ignore_errors=True)
            store.metadata["models"].pop(str(model_id), None)
            for record in store.metadata["experiments"].values():
                record.get("models", {}).pop(str(model_id), None)
                for key, _, _ in _SCORE_FILES.values():
                    if record.get(key) is not None and model_id in record[key]["model_ids"]:
                        record[key] = None
            store.save()

    @classmethod
    def forget_experiment(cls, root, name: str) -> None:
        """Deletes experiment ``name`` (target gradients, scores) from the store in ``root``; takes the lock."""
        path = Path(root) / METADATA
        with cls(root, _settings_from(_load_metadata(path), path)) as store:
            shutil.rmtree(store._experiment_dir(name), ignore_errors=True)
            store.metadata["experiments"].pop(name, None)
            store.save()

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

    def _experiment_advice(self, name: str) -> str:
        return (
            f"Its data cannot be trusted: to compute experiment {name!r} again, run "
            f"trak_core.Store.forget_experiment({str(self.root)!r}, {name!r}) and score its targets again"
        )

    def target_grads(self, name: str, model_id: int, mode: str = "r+") -> np.memmap:
        """``(t, K)`` float32: projected target gradients of checkpoint ``model_id``, scaled."""
        num_targets = self.experiment(name)["num_targets"]
        commits = self._experiment_dir(name) / str(int(model_id)) / "scored.npy"
        try:
            done = int(np.count_nonzero(open_npy(commits, (num_targets,), np.uint8, "r")))
        except FileNotFoundError:
            done = 0
        except StoreDamagedError as error:
            raise StoreDamagedError(f"{error}. {self._experiment_advice(name)}") from None
        return self._array(
            self._experiment_dir(name) / str(int(model_id)) / "grads.npy",
            (num_targets, self.settings.proj_dim),
            FEATURE_DTYPE,
            mode,
            f"{commits} records {done} finished rows in it" if done else None,
            self._experiment_advice(name),
        )

    def target_commits(self, name: str, model_id: int, mode: str = "r+") -> CommitCounts:
        """Commit counts of the target rows of experiment ``name`` for checkpoint ``model_id``."""
        path = self._experiment_dir(name) / str(int(model_id)) / "scored.npy"
        # Never "committed" by the metadata: if it is lost, the targets are simply scored again.
        return self._commits(path, self.experiment(name)["num_targets"], mode, None, self._experiment_advice(name))

    def _modules(self, per_module: bool) -> tuple[int, ...]:
        """The leading ``(M,)`` of per-module score arrays; ``()`` for whole-model scores."""
        if not per_module:
            return ()
        if self.settings.module_columns is None:
            raise ValueError(f"the store in {self.root} holds whole-model features: it has no per-module scores")
        return (len(self.settings.module_columns),)

    def _score_grid(self, name: str, per_module: bool = False) -> tuple[int, ...] | None:
        record = self.experiment(name).get(_SCORE_FILES[per_module][0])
        if record is None:
            return None
        tile_rows, tile_cols = record["tile_shape"]
        n, t = self.settings.train_set_size, self.experiment(name)["num_targets"]
        return (*self._modules(per_module), -(-n // tile_rows), -(-t // tile_cols))

    def scores(self, name: str, mode: str = "r+", per_module: bool = False) -> np.memmap:
        """``(n, t)`` float32: the final scores of experiment ``name``; ``per_module``: ``(M, n, t)``,
        each module's scores from its block alone."""
        key, data_file, tiles_file = _SCORE_FILES[per_module]
        shape = (*self._modules(per_module), self.settings.train_set_size, self.experiment(name)["num_targets"])
        record = self.experiment(name).get(key)
        committed = None
        if record is not None and record["complete"]:
            committed = f"{METADATA} records the {key} of experiment {name!r} as complete"
        elif record is not None:
            tiles = self._experiment_dir(name) / tiles_file
            try:
                grid = self._score_grid(name, per_module)
                done = int(np.count_nonzero(open_npy(tiles, grid, np.uint8, "r")))
            except FileNotFoundError:
                done = 0
            except StoreDamagedError as error:
                raise StoreDamagedError(f"{error}. {self._experiment_advice(name)}") from None
            committed = f"{tiles} records {done} finished score tiles in it" if done else None
        return self._array(
            self._experiment_dir(name) / data_file, shape, np.float32, mode, committed, self._experiment_advice(name)
        )

    def tile_commits(
        self, name: str, grid: tuple[int, ...], mode: str = "r+", per_module: bool = False
    ) -> CommitCounts:
        """Commit counts of the score tiles of experiment ``name``, shape ``grid`` (``(M, R, C)``
        for ``per_module``)."""
        key, _, tiles_file = _SCORE_FILES[per_module]
        record = self.experiment(name).get(key)
        committed = None
        if record is not None and record["complete"]:
            committed = f"{METADATA} records the {key} of experiment {name!r} as complete"
        return self._commits(
            self._experiment_dir(name) / tiles_file, grid, mode, committed, self._experiment_advice(name)
        )

    def delete_tiles(self, name: str, per_module: bool = False) -> None:
        self._check_writable("cannot delete score tiles")
        key, _, tiles_file = _SCORE_FILES[per_module]
        record = self.experiment(name).get(key)
        if record is not None and record["complete"]:
            # Recorded first: complete scores without their tiles would be refused as damaged.
            self.update_experiment(name, **{key: {**record, "complete": False}})
        (self._experiment_dir(name) / tiles_file).unlink(missing_ok=True)


def _metadata_advice(path: Path) -> str:
    return (
        f"It records the store's settings and which rows are finished. Restore {path.name} from a copy if you "
        "have one; otherwise start over with load_from_save_dir=False (deletes the store's models/ and "
        "experiments/ folders) or use another save_dir"
    )


def _load_metadata(path: Path) -> dict:
    """Reads and checks ``metadata.json``; damage raises :class:`StoreDamagedError` naming it."""
    try:
        metadata = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreDamagedError(f"{path} is damaged (not valid JSON: {error}). {_metadata_advice(path)}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise StoreMismatchError(f"{path} is not a trak_core store (format {found!r})")
    if metadata.get("version") != VERSION:
        raise StoreMismatchError(f"{path} has store version {metadata.get('version')}, this trak_core reads {VERSION}")
    problem = _metadata_problem(metadata)
    if problem:
        raise StoreDamagedError(f"{path} is damaged ({problem}). {_metadata_advice(path)}")
    return metadata


def _metadata_problem(metadata: dict) -> str | None:
    """What is wrong with the structure of a metadata dict, or None."""
    for key, kind in (("settings", dict), ("models", dict), ("experiments", dict)):
        if not isinstance(metadata.get(key), kind):
            return f"{key!r} is missing or not an object"
    for model_id, record in metadata["models"].items():
        if not model_id.isdigit() or not isinstance(record, dict):
            return f"models entry {model_id!r} is malformed"
        for key in ("fingerprint", "featurized", "finalized"):
            if key not in record:
                return f"models entry {model_id!r} lacks {key!r}"
    for name, record in metadata["experiments"].items():
        if not isinstance(record, dict) or not isinstance(record.get("num_targets"), int) or "scores" not in record:
            return f"experiments entry {name!r} is malformed"
        for key, _, _ in _SCORE_FILES.values():
            scores = record.get(key)
            if scores is not None and not (
                isinstance(scores, dict) and {"model_ids", "tile_shape", "complete"} <= scores.keys()
            ):
                return f"the {key} record of experiment {name!r} is malformed"
    return None


def _settings_from(metadata: dict, path: Path) -> StoreSettings:
    try:
        return StoreSettings.from_json(metadata["settings"])
    except (TypeError, KeyError, ValueError) as error:
        raise StoreDamagedError(f"{path} is damaged (its settings: {error}). {_metadata_advice(path)}") from None

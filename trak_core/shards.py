"""A sharded store: ``S`` ordinary stores, one per residue class of the train rows, plus a manifest.

Layout::

    save_dir/
      shards.json                 the manifest: format, the global settings, num_shards S
      shards/<s>-of-<S>/          an ordinary Store (see store.py) of the rows i ≡ s (mod S),
                                  local row i // S, with its own metadata, commit counts and lock

Each shard store has exactly one writer (its ``flock``), so two processes never write pages of
one file.  Rank r of W owns the shards s ≡ r (mod W); see docs/design.md.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from .atomic_files import read_json, write_json_atomic
from .settings import StoreMismatchError, StoreSettings
from .store import METADATA, Store
from .store_errors import StoreDamagedError, StoreError
from .store_lock import WriterLock

MANIFEST = "shards.json"
FORMAT = "trak_core.shards"
VERSION = 1


class ShardLayout:
    """Row ``i`` of ``n`` lives in shard ``i % S`` at local row ``i // S``."""

    def __init__(self, n: int, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.n, self.num_shards = int(n), int(num_shards)

    def size(self, shard: int) -> int:
        """Number of rows in ``shard``: ``|{i < n : i ≡ shard (mod S)}|``."""
        return max(0, -(-(self.n - shard) // self.num_shards))

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        return rows % self.num_shards

    def local(self, rows: np.ndarray) -> np.ndarray:
        return rows // self.num_shards

    def global_rows(self, shard: int, local: np.ndarray) -> np.ndarray:
        return local * self.num_shards + shard

    def owned(self, rank: int, world: int) -> list[int]:
        """The shards rank ``rank`` of ``world`` writes: ``s ≡ rank (mod world)``."""
        return list(range(rank, self.num_shards, world))

    def owner(self, shard: int, world: int) -> int:
        return shard % world

    def directory(self, root: Path, shard: int) -> Path:
        return Path(root) / "shards" / f"{shard}-of-{self.num_shards}"

    def shard_settings(self, settings: StoreSettings, shard: int) -> StoreSettings:
        return dataclasses.replace(settings, train_set_size=self.size(shard))


def is_sharded(root) -> bool:
    return (Path(root) / MANIFEST).exists()


def clear(root) -> None:
    """Deletes a sharded store's manifest (first: a kill half-way leaves shards without one,
    which :func:`open_manifest` refuses) and shards; nothing else in ``root``.

    Takes the writer lock of every shard first, as :class:`Store` does before clearing itself:
    a ``load_from_save_dir=False`` launch on a save_dir that another job is still writing raises
    :class:`StoreLockedError` naming that job's process instead of deleting its files under it.
    """
    root = Path(root)
    folder = root / "shards"
    locks = []
    try:
        for directory in sorted(folder.iterdir()) if folder.is_dir() else ():
            if directory.is_dir():
                locks.append(WriterLock(directory))
        (root / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        for lock in locks:
            lock.release()


def create_manifest(root, settings: StoreSettings, num_shards: int) -> None:
    """Writes the manifest of a new sharded store (call on one rank only, then a barrier)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if (root / MANIFEST).exists():
        return
    if (root / METADATA).exists():
        raise StoreMismatchError(
            f"{root} holds a single-process store ({METADATA}); a sharded run cannot reuse it. Use another "
            "save_dir, or finish it in one process"
        )
    if (root / "shards").exists():
        raise StoreDamagedError(
            f"{root / 'shards'} exists but {root / MANIFEST} is missing: the shards' layout cannot be checked. "
            "Restore the manifest, or start over with load_from_save_dir=False"
        )
    write_json_atomic(
        root / MANIFEST,
        {"format": FORMAT, "version": VERSION, "settings": settings.to_json(), "num_shards": int(num_shards)},
    )


def open_manifest(root, settings: StoreSettings | None) -> ShardLayout:
    """Reads and checks the manifest; ``settings`` (None: any) must equal the recorded ones."""
    path = Path(root) / MANIFEST
    try:
        manifest = read_json(path)
        stored = StoreSettings.from_json(manifest["settings"])
        num_shards = int(manifest["num_shards"])
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"format {manifest.get('format')!r} version {manifest.get('version')!r}")
    except FileNotFoundError:
        raise FileNotFoundError(f"no sharded trak_core store in {root} ({MANIFEST} is missing)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise StoreDamagedError(f"{path} is damaged ({error}); restore it or start over") from None
    if settings is not None:
        problems = settings.mismatches(stored)
        if problems:
            raise StoreMismatchError(
                f"the sharded store in {root} was created with other settings: " + "; ".join(problems)
            )
    return ShardLayout(stored.train_set_size, num_shards)


def open_shard(root, layout: ShardLayout, settings: StoreSettings, shard: int) -> Store:
    """The writable store of ``shard`` (takes its writer lock)."""
    return Store(layout.directory(root, shard), layout.shard_settings(settings, shard))


def read_shard(root, layout: ShardLayout, shard: int) -> Store:
    """Shard ``shard`` read-only (no lock: another rank may be writing it)."""
    directory = layout.directory(root, shard)
    if not (directory / METADATA).exists():
        raise StoreError(f"shard {shard} of {root} was never written ({directory / METADATA} is missing)")
    return Store.open(directory)


class ShardedScores:
    """The ``(n, t)`` scores of a sharded store, read from the shards' score files on demand.

    ``np.asarray(scores)`` assembles everything (n·t floats); :meth:`rows` reads a block of rows.
    """

    def __init__(self, root, exp_name: str):
        self.layout = open_manifest(root, None)
        self._parts = []
        for shard in range(self.layout.num_shards):
            store = read_shard(root, self.layout, shard)
            record = store.experiment(exp_name)
            if record is None or record["scores"] is None or not record["scores"]["complete"]:
                raise StoreError(f"the scores of experiment {exp_name!r} in shard {shard} of {root} are not complete")
            self._parts.append(store.scores(exp_name, mode="r"))
        self.shape = (self.layout.n, self._parts[0].shape[1])
        self.dtype = self._parts[0].dtype

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the scores, ``(stop - start, t)``."""
        rows = np.arange(start, min(stop, self.shape[0]))
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        shards, local = self.layout.shard_of(rows), self.layout.local(rows)
        for shard, part in enumerate(self._parts):
            mine = shards == shard
            out[mine] = part[local[mine]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.rows(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

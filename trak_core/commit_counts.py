"""Per-unit commit counters: the single source of truth for what is finished in a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic_files import open_npy


class CommitCounts:
    """A ``uint8`` memmap counting how many times each unit (an example's row, a score tile)
    was committed.

    Protocol for crash safety: write a unit's data, flush it, *then* commit the unit.  A unit
    with count 0 is unfinished (its data may be partial and is recomputed); count >= 1 means
    finished, and finished units are never computed again, so after any number of kills and
    resumes every count is exactly 1.  Keeping the count instead of a flag makes that last
    statement checkable: a count of 2 would reveal recomputed work.

    Args:
        path: the ``.npy`` file (created if missing, unless ``mode="r"``).
        shape: number of units, or a shape for 2-D units (score tiles).
        mode: ``"r+"`` or ``"r"`` (read-only: for watching a store another process writes).
    """

    def __init__(self, path: Path, shape, mode: str = "r+"):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if mode == "r" and not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist (yet)")
        self._counts = open_npy(path, shape, np.uint8, mode)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._counts.shape

    def done(self, index=...) -> np.ndarray:
        """Boolean mask (same shape as ``self._counts[index]``): which units are finished."""
        return np.asarray(self._counts[index]) > 0

    def num_done(self) -> int:
        return int(np.count_nonzero(self._counts))

    def all_done(self) -> bool:
        return self.num_done() == self._counts.size

    def counts(self) -> np.ndarray:
        """A copy of the raw counts (``uint8``), for audits and tests."""
        return np.array(self._counts)

    def commit(self, index) -> None:
        """Marks units finished.  Call only after their data has been written and flushed."""
        # np.add.at handles repeated indices; a saturating uint8 would need 255 recomputations.
        np.add.at(self._counts, index, 1)
        self._counts.flush()

    def reset(self) -> None:
        """Marks every unit unfinished (the data they described is about to be rewritten)."""
        self._counts[...] = 0
        self._counts.flush()

"""Crash-safe file primitives: JSON replaced atomically, ``.npy`` memmaps created atomically.

A SIGKILL can land between any two instructions.  Readers must therefore only ever see a file
either in its old complete state or its new complete state: we write to a temporary file in
the same directory and ``os.replace`` it over the target (atomic on POSIX within a filesystem).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def write_json_atomic(path: Path, obj) -> None:
    """Writes ``obj`` as JSON to ``path`` so that ``path`` is never seen half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.flush()
            # fsync so that a power loss after the rename cannot leave an empty file behind it.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def open_npy(path: Path, shape: tuple[int, ...], dtype, mode: str = "r+") -> np.memmap:
    """Opens the ``.npy`` memmap at ``path``, creating it zero-filled if it does not exist.

    Creation goes through a temporary file and a rename, so a killed process never leaves a
    truncated array behind.  An existing file of another shape or dtype raises ``ValueError``
    rather than being silently reinterpreted.

    Args:
        path: file path (``.npy``).
        shape: expected shape.
        dtype: expected numpy dtype.
        mode: ``"r+"`` (read/write) or ``"r"``.
    Returns:
        ``np.memmap`` of ``shape`` and ``dtype``.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            # open_memmap writes the header and extends the file sparsely: zeros cost no I/O.
            created = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            created.flush()
            del created
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    array = np.lib.format.open_memmap(path, mode=mode)
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(
            f"{path} holds an array of shape {array.shape} and dtype {array.dtype}, "
            f"expected shape {shape} and dtype {dtype}"
        )
    return array

"""Crash-safe file primitives: JSON replaced atomically, ``.npy`` memmaps created atomically and verified.

A SIGKILL can land between any two instructions.  Readers must therefore only ever see a file
either in its old complete state or its new complete state: we write to a temporary file in
the same directory and move it into place atomically (``os.replace`` for JSON; a hard link,
which fails instead of replacing, for ``.npy`` files, so an existing array is never clobbered).

``.npy`` files are fully allocated when created (``posix_fallocate``, else zeros written in
chunks): a memmap over a sparse file dies with SIGBUS when the disk fills up, an allocated one
cannot.  A full disk therefore surfaces as :class:`StoreDiskFullError` at creation time.  Every
open verifies the header and the file size against the expected shape and dtype, so a truncated
or damaged array raises :class:`StoreDamagedError` instead of being zero-extended by ``np.memmap``.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .store_errors import StoreDamagedError, StoreDiskFullError

_ZERO_CHUNK = 16 << 20  # bytes written at a time where posix_fallocate is unavailable


def _disk_full(path: Path, needed: int, error: OSError) -> StoreDiskFullError:
    return StoreDiskFullError(
        errno.ENOSPC,
        f"no space left on the device of {path}: {needed} bytes ({needed / 2**20:.1f} MiB) are needed "
        f"({error.strerror or error}). Nothing committed was lost: free space (or use a save_dir on another "
        "disk) and run the same code again; it resumes where it stopped.",
    )


def write_json_atomic(path: Path, obj) -> None:
    """Writes ``obj`` as JSON to ``path`` so that ``path`` is never seen half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    text = None
    try:
        with os.fdopen(fd, "w") as f:
            text = json.dumps(obj, indent=2, sort_keys=True)
            f.write(text)
            f.flush()
            # fsync so that a power loss after the rename cannot leave an empty file behind it.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise _disk_full(path, len(text or ""), error) from error
        raise


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def _allocate(fd: int, size: int, path: Path) -> None:
    """Gives the first ``size`` bytes of ``fd`` real disk blocks (a memmap then cannot SIGBUS)."""
    start = os.fstat(fd).st_size
    if size <= start:
        return
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                    raise
        # No fallocate on this platform or filesystem: write the zeros.
        zeros = bytes(min(_ZERO_CHUNK, size - start))
        offset = start
        while offset < size:
            offset += os.pwrite(fd, zeros[: size - offset], offset)
        os.fsync(fd)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, size, error) from error
        raise


def _create_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Creates a zero-filled, fully allocated ``.npy`` at ``path``; never replaces an existing file."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            size += f.tell()
            _allocate(f.fileno(), size, path)
        try:
            # A hard link fails if ``path`` exists: a file another process created is never replaced.
            os.link(tmp, path)
        except FileExistsError:
            pass  # someone else created it first: use theirs (verified by the caller)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # A filesystem without hard links: the store's writer lock keeps this single-writer.
            if not path.exists():
                os.replace(tmp, path)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(error, StoreDiskFullError):
            raise _disk_full(path, size, error) from error
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _read_header(path: Path):
    """``(shape, fortran_order, dtype, data offset)`` of the ``.npy`` at ``path``."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            return tuple(shape), fortran, dtype, f.tell()
    except (ValueError, OSError, SyntaxError, EOFError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise StoreDamagedError(f"{path}: the .npy header is damaged ({error})") from error


def verify_npy(path: Path, shape: tuple[int, ...], dtype) -> int:
    """Checks header, shape, dtype and size of the ``.npy`` at ``path``; returns the data offset.

    Raises:
        StoreDamagedError: (a ``ValueError``) naming the file and what is wrong with it.
    """
    path, dtype, shape = Path(path), np.dtype(dtype), tuple(int(s) for s in shape)
    found_shape, fortran, found_dtype, offset = _read_header(path)
    if found_shape != shape or found_dtype != dtype or fortran:
        raise StoreDamagedError(
            f"{path} holds an array of shape {found_shape} and dtype {found_dtype}"
            f"{' (Fortran order)' if fortran else ''}, expected shape {shape} and dtype {dtype}"
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise StoreDamagedError(
            f"{path} is {'truncated' if size < expected else 'longer than its header says'}: "
            f"{size} bytes, its header (shape {shape}, {dtype}) needs {expected}"
        )
    return offset


def open_npy(path: Path, shape: tuple[int, ...], dtype, mode: str = "r+", *, advice: str = "") -> np.memmap:
    """Opens the ``.npy`` memmap at ``path``, verified; in ``"r+"`` mode creates it zero-filled if missing.

    Creation writes a temporary file (header and fully allocated data) and hard-links it into
    place, so a killed process never leaves a truncated array behind and an existing file is
    never replaced.  An existing file is verified first: another shape or dtype, a damaged
    header or a wrong size (a truncated file) raise :class:`StoreDamagedError` (a ``ValueError``)
    rather than being reinterpreted or zero-extended.  ``"r"`` never creates a file.

    Args:
        path: file path (``.npy``).
        shape: expected shape.
        dtype: expected numpy dtype.
        mode: ``"r+"`` (read/write) or ``"r"``.
        advice: what the user should do, appended to the message of a damaged file.
    Returns:
        ``np.memmap`` of ``shape`` and ``dtype``.
    Raises:
        FileNotFoundError: ``mode="r"`` and the file does not exist.
        StoreDiskFullError: (an ``OSError`` with ``errno.ENOSPC``) no space to create it.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    if not path.exists():
        if mode == "r":
            raise FileNotFoundError(f"{path} does not exist (yet)")
        _create_npy(path, shape, dtype)
    try:
        offset = verify_npy(path, shape, dtype)
    except StoreDamagedError as error:
        if advice:
            raise StoreDamagedError(f"{error}. {advice}") from None
        raise
    if 0 in shape:
        return np.zeros(shape, dtype)  # np.memmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape, order="C")

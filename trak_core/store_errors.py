"""The exceptions of the on-disk store: every fault names the file and says what to do."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A fault of a trak_core store: a damaged or missing file, a second writer, a full disk.

    The message names the file (or directory) and what to do.  Subclasses narrow the cause.
    """


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock; the message names it (pid, host, start)."""


class StoreDamagedError(StoreError, ValueError):
    """A store file is truncated, has a damaged header, or another shape/dtype than recorded."""


class StoreMissingFileError(StoreError):
    """A file the metadata records as holding committed data is missing.

    Deliberately not a ``FileNotFoundError``: that one means "not started yet" (read-only opens
    of files nothing was committed to), which a caller may wait for; this one is data loss.
    """


class StoreDiskFullError(OSError, StoreError):
    """No space left to allocate a store file (``errno`` is ``ENOSPC``); nothing committed is lost."""

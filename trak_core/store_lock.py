"""One writer per store: an exclusive ``flock`` on ``<save_dir>/writer.lock``.

The kernel releases a ``flock`` when the process holding it exits, however it exits (SIGKILL
included), so a lock is never stale.  The holder writes its pid, host, start time and command
into the lock file, and a second process that finds the lock taken raises
:class:`StoreLockedError` naming it.

Within one process, stores opened on the same directory share one lock (reference counted): a
notebook that builds a new ``TRAKer`` on the same ``save_dir`` before the old one is collected
keeps working.  A child made by ``fork`` does not inherit the lock (its copies of the lock's file
descriptors are closed), so it cannot write a store its parent holds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .store_errors import StoreLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; one writer is then the user's duty
    fcntl = None

LOCK_FILE = "writer.lock"

_held: dict[str, list] = {}  # resolved directory -> [fd, count]
_guard = threading.Lock()


def _forget_inherited_locks() -> None:
    for fd, _ in _held.values():
        try:
            os.close(fd)  # the parent's lock stays: it holds its own descriptor of the same file
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    for attempt in range(3):
        try:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            info = json.loads(text)
            return (
                f"pid {info.get('pid')} on host {info.get('host')!r}, since {info.get('started')}, "
                f"running {info.get('command')!r}"
            )
        except (OSError, ValueError):
            time.sleep(0.05 * (attempt + 1))  # the holder may be writing it right now
    return "a process that has not recorded itself yet"


class WriterLock:
    """The writer lock of directory ``root``; :meth:`release` it (idempotent) when done."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.pid = os.getpid()
        self.released = False
        key = str(self.root)
        with _guard:
            entry = _held.get(key)
            if entry is not None:
                entry[1] += 1
                return
            _held[key] = [self._acquire(), 1]

    def _acquire(self) -> int:
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"the store in {self.root} is being written by another process ({holder}; lock file {path}). "
                "One process writes a store at a time: wait for that process to finish (or stop it), or use "
                "another save_dir. trak_core.Store.open(save_dir) inspects a store without writing it."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd

    def held(self) -> bool:
        """True while this lock is held by this very process (False in a forked child)."""
        return not self.released and self.pid == os.getpid() and str(self.root) in _held

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.pid != os.getpid():
            return
        key = str(self.root)
        with _guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                try:
                    os.ftruncate(entry[0], 0)  # no holder any more
                except OSError:
                    pass
                os.close(entry[0])  # closing the descriptor releases the flock

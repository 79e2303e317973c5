"""Progress bars (tqdm) and stage timings (logging, logger ``"trak_core"``)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

logger = logging.getLogger("trak_core")


def progress_bar(iterable=None, *, total=None, desc: str, quiet: bool, unit: str = "it", initial: int = 0):
    """A tqdm bar that is silent when ``quiet`` (the iterable still works the same)."""
    return tqdm(iterable, total=total, desc=desc, disable=quiet, unit=unit, initial=initial, leave=False)


@contextmanager
def log_time(what: str, timings: dict | None = None):
    """Logs ``"<what>: 1.23 s"`` at INFO when the block ends; adds the seconds to ``timings[what]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        if timings is not None:
            timings[what] = timings.get(what, 0.0) + seconds
        logger.info("%s: %.2f s", what, seconds)

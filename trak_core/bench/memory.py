"""Peak memory of one piece of work, measured in the running process."""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mib(field: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError(f"{field} not in {_STATUS}")


class PeakMemory:
    """Context manager: ``.mib`` is the peak memory above the level at entry, in MiB.

    CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``).  CPU: the
    resident set's high-water mark, which Linux lets a process reset (writing 5 to
    ``/proc/self/clear_refs``), so several measurements fit in one process; ``mib`` is None
    where that is not possible.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                _CLEAR_REFS.write_text("5")
                self._start = _status_mib("VmRSS")
            except OSError:
                self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        elif self._start is not None:
            self.mib = _status_mib("VmHWM") - self._start

"""Optional import of the compiled module ``fastjl._C``.

Importing fastjl never fails because ``_C`` is missing or broken: the reason is kept and
raised only when something needs the module.
"""

from __future__ import annotations

import importlib

try:
    _C = importlib.import_module("fastjl._C")
    IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built (no nvcc, FASTJL_SKIP_CUDA_BUILD=1) or unloadable
    _C = None
    IMPORT_ERROR = f"fastjl._C is not built or failed to load ({exc})"


def require_extension(op: str):
    """The compiled module, or a RuntimeError naming ``op`` and why it is unavailable."""
    if _C is None:
        raise RuntimeError(f"{op} needs the compiled module: {IMPORT_ERROR}")
    return _C

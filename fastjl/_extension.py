"""Optional import of the compiled module ``fastjl._C``.

Importing fastjl never fails because ``_C`` is missing or broken: the reason is kept and
raised only when something needs the module.
"""

from __future__ import annotations

import importlib

try:
    _C = importlib.import_module("fastjl._C")
    IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built (FASTJL_SKIP_EXTENSION=1, or its build failed) or unloadable
    _C = None
    IMPORT_ERROR = f"fastjl._C is not built or failed to load ({exc})"

# Why a loaded _C has no CUDA kernels: setup.py builds its host half only (CMake
# -DFASTJL_CUDA=OFF) when it finds no nvcc or FASTJL_SKIP_CUDA_BUILD=1 is set.
BUILT_WITHOUT_CUDA = "fastjl._C built without CUDA (no nvcc at install, or FASTJL_SKIP_CUDA_BUILD=1)"


def built_with_cuda(module=None) -> bool:
    """Whether ``module`` (default: the loaded ``fastjl._C``) has the CUDA kernels: False for
    the host-only build and when ``_C`` is missing.  ``build_info()["cuda"]`` says so; builds
    from before that key always had CUDA."""
    module = _C if module is None else module
    return module is not None and bool(module.build_info().get("cuda", True))


def require_extension(op: str):
    """The compiled module, or a RuntimeError naming ``op`` and why it is unavailable."""
    if _C is None:
        raise RuntimeError(f"{op} needs the compiled module: {IMPORT_ERROR}")
    return _C

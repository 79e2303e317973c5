"""Shared test utilities: float64 references, poisoned outputs, skips for the compiled module."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import fastjl
from fastjl import check
from fastjl._extension import BUILT_WITHOUT_CUDA, built_with_cuda
from fastjl.spec import matrix_block


def reference_projection(x, proj_dim, seed=0, kind="rademacher", offset=0):
    """``x @ P`` in float64 with ``P`` from the entry-wise spec (small shapes only)."""
    dim = x.shape[1]
    p = matrix_block(seed, kind, range(offset, offset + dim), range(proj_dim), device=x.device)
    return x.double() @ p


def poisoned(shape, dtype=torch.float32, device="cpu"):
    """An output buffer full of NaN, so elements a backend forgets to write show up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def relative_error(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# Relative error (Frobenius) of a float32-accumulated projection vs the float64 reference,
# by input dtype: float32 inputs only suffer accumulation rounding; fp16/bf16 inputs are
# exact in float32, so the comparison is against the reference of the rounded input.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float64: 1e-12}


def materialized_linear_gradient(a, g, bias=False):
    """Per-example gradients of a Linear layer, formed explicitly in float64: ``(B, d_out*d_in [+ d_out])``
    from inputs ``a`` ``(B, [T,] d_in)`` and output gradients ``g`` ``(B, [T,] d_out)``."""
    if a.dim() == 2:
        a, g = a[:, None], g[:, None]
    return check.linear_gradients(a, g, bias)


def linear_reference(a, g, proj_dim, *, seed=0, kind="rademacher", offset=0, bias=False):
    """``project_linear``'s float64 reference: the per-example gradients formed explicitly,
    projected by the torch backend in float64 (fast enough for D of 10^6)."""
    x = materialized_linear_gradient(a, g, bias)
    return fastjl.project(x, proj_dim, seed=seed, kind=kind, offset=offset, backend="torch")


HAS_EXTENSION = importlib.util.find_spec("fastjl._C") is not None
# The CUDA half of fastjl._C (its kernels' entry points): absent from the host-only build.
HAS_CUDA_BUILD = HAS_EXTENSION and built_with_cuda(importlib.import_module("fastjl._C"))
ON_CUDA_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
needs_cuda_kernels = pytest.mark.skipif(
    not (ON_CUDA_GPU and HAS_CUDA_BUILD),
    reason="needs a CUDA GPU of compute capability >= 8.0 and fastjl._C built with CUDA",
)
# For tests that call the CUDA entry points without a GPU (argument checks, refusals).
needs_cuda_build = pytest.mark.skipif(
    not HAS_CUDA_BUILD, reason=f"{BUILT_WITHOUT_CUDA}: the test calls the CUDA half of fastjl._C"
)


def extension_or_skip_module():
    """``fastjl._C``, or a module-level skip saying why it is missing (host-side tests)."""
    if not HAS_EXTENSION:
        pytest.skip(
            "fastjl._C is not built (FASTJL_SKIP_EXTENSION=1 at install, or its C++ build failed there)",
            allow_module_level=True,
        )
    return importlib.import_module("fastjl._C")


# The sparse kinds' test cases shared by the torch-backend and Triton suites: (kind, sparsity,
# mask_rate), every s and two mask rates, at an offset past 2^40 (64-bit rows).
SPARSE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SPARSE_CASES = [
    ("sjlt", 1, None),
    ("sjlt", 2, None),
    ("sjlt", 4, None),
    ("sjlt", 8, None),
    ("grass", 1, 0.3),
    ("grass", 4, 0.7),
]
SPARSE_OFFSET = 2**40 + 3


def compiling_env(root) -> dict:
    """The environment for a fresh Python process that compiles Triton kernels: this one's
    without TRITON_INTERPRET (conftest.py sets it here when there is no GPU), with ``root`` on
    PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def load_bench_module(name: str):
    """``bench/<name>.py`` imported by path (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the file executes
    spec.loader.exec_module(module)
    return module


def cubins_or_skip() -> tuple:
    """(path of the built fastjl._C, cuobjdump) for the tests that read its compiled code;
    skips where _C is not built, is the host-only build (no cubins) or no cuobjdump is found."""
    from fastjl._backends import cuda_resources

    so = cuda_resources.extension_path()
    if so is None:
        pytest.skip("fastjl._C is not built (pip install -e . with nvcc available builds it)")
    if HAS_EXTENSION and not HAS_CUDA_BUILD:
        pytest.skip(f"{BUILT_WITHOUT_CUDA}: it embeds no cubins to check")
    tool = cuda_resources.find_cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found ($CUOBJDUMP, PATH, CUDA_HOME/bin, /usr/local/cuda/bin, triton's bin)")
    return so, tool

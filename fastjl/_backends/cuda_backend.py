"""CUDA backend: the tensor-core kernels compiled into ``fastjl._C`` (csrc/project_kernel.cuh:
``project`` feeds it tiles of x, ``project_linear`` tiles of per-example Linear gradients).

``fastjl._C`` takes raw pointers, sizes, dtype codes and the stream handle (it includes no
torch headers, so one build serves every torch version); this wrapper is where torch tensors
become those integers.  Arguments arrive validated by :func:`fastjl.project`.

Precision (float32 accumulation throughout): float16/bfloat16 inputs enter the MMAs as they
are; float32 inputs are split into two bfloat16 halves (~16 significant bits, bf16 keeps
float32's exponent range), predicted relative error of the projection ~5e-6.  Gaussian
entries are split likewise (hi + lo), so they keep ~16 (bf16) or ~22 (fp16) bits.

The launch plan (tiles, D-splits) depends on the GPU's SM count, so results are bitwise
reproducible on one GPU model and agree across models to float32 rounding.
"""

from __future__ import annotations

import os

import torch

from .._extension import _C, BUILT_WITHOUT_CUDA, IMPORT_ERROR, built_with_cuda
from ..devices import device_problem
from ..spec import KIND_CODES
from ..validation import SIXTEEN_BIT
from . import linear_chunked

NAME = "cuda"

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MIN_CAPABILITY = (8, 0)  # mma.sync bf16 m16n8k16, cp.async
# The sm_90a kernel (wgmma.mma_async; csrc/wgmma_kernel.cuh), on compute capability 9.0 only.
# The default where it was measured faster: rademacher, 16-bit x, B > 64 (the 128-row tile) --
# on an H100 (run 7, bench/results/gpu-h100-20261128-run7) 1.12-1.14x the mma.sync kernel
# (bf16, B = 128 and 512, K = 2048 and 8192) and 1.18-1.21x Triton's, verified by
# tests/test_cuda_wgmma.py in the same run.  Gaussian, float32 x and the 64-row tile were not
# timed, so they keep mma.sync unless FASTJL_CUDA_WGMMA=1 (any kind or dtype, B >= 64);
# FASTJL_CUDA_WGMMA=0 turns it off.
WGMMA_ENV = "FASTJL_CUDA_WGMMA"
WGMMA_CAPABILITY = (9, 0)
WGMMA_MIN_BATCH = 64  # the kernel's smallest tile (B <= 32 has no wgmma tile)
WGMMA_DEFAULT_MIN_BATCH = 65  # the 128-row tile, as measured


def build_state() -> str:
    """Whether ``fastjl._C`` is built, for the availability line of ``fastjl.backends()``:
    "fastjl._C built (sm_80, ..., +PTX)", "fastjl._C built without CUDA (...): ...",
    "fastjl._C not built (...)" or "... failed to load"."""
    if _C is None:
        if "No module named 'fastjl._C'" in (IMPORT_ERROR or ""):
            return "fastjl._C not built (FASTJL_SKIP_EXTENSION=1 at install, or its C++ build failed there)"
        return IMPORT_ERROR or "fastjl._C is not loaded"
    if not built_with_cuda(_C):
        return f"{BUILT_WITHOUT_CUDA}: reinstall fastjl where nvcc is found for the CUDA kernels"
    return f"fastjl._C built ({_archs_text()})"


def _archs_text() -> str:
    """``_C.build_info()["archs"]`` (CMake's "80-real ... 90-virtual") as "sm_80, ..., +PTX"."""
    try:
        archs = str(_C.build_info().get("archs", "")).split()
    except Exception:  # an old build without build_info: say built, archs unknown
        return "architectures unknown"
    real = [f"sm_{a.split('-')[0]}" for a in archs if not a.endswith("-virtual")]
    ptx = [f"compute_{a.split('-')[0]}" for a in archs if a.endswith("-virtual")]
    return ", ".join(real + [f"+PTX {p}" for p in ptx]) or "architectures unknown"


def availability(device: torch.device) -> str | None:
    if device.type != "cuda":
        # On a CPU the first thing a user wants to know is whether the extension was built at all.
        return f"{build_state()}; needs a CUDA tensor, got a tensor on {device}"
    if _C is None or not built_with_cuda(_C):
        return build_state()
    if not hasattr(_C, "project"):
        return "fastjl._C has no projection kernel in this build (rebuild fastjl)"
    problem = device_problem(device)
    if problem is not None:
        return problem
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"needs a GPU of compute capability 8.0 or newer, got {capability[0]}.{capability[1]}"
    return None


def project(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int) -> None:
    """Writes ``x @ P[offset:offset+D, :K]`` into ``out`` (``(B, K)`` float32, any strides).

    ``x``: ``(B, D)`` float32/float16/bfloat16 CUDA tensor, any strides (unit stride along D
    with 16-byte aligned rows takes the asynchronous-copy path).  Runs on the current stream
    of ``x``'s device; does not synchronize.
    """
    batch, dim = x.shape
    args = tensor_args(x, out, seed=seed, kind=kind, offset=offset)
    kernel = _C.project_sm90 if use_wgmma(batch, x.device, kind=kind, dtype=x.dtype) else _C.project
    _launch(kernel, args, _C.project_workspace_bytes, (batch, dim, out.shape[1]), x.device)


def _is_sm90(device: torch.device) -> bool:
    return tuple(torch.cuda.get_device_capability(device)) == WGMMA_CAPABILITY


def _measured_shape(kind: str, dtype: torch.dtype, batch: int) -> bool:
    return kind == "rademacher" and dtype in SIXTEEN_BIT and batch >= WGMMA_DEFAULT_MIN_BATCH


def measured_faster(kind: str, dtype: torch.dtype, batch: int, device: torch.device) -> bool:
    """Where this backend's wgmma kernel was measured faster than its mma.sync kernel and than
    Triton's (WGMMA_ENV): rademacher, 16-bit x, B > 64, compute capability 9.0.  One rule for
    :func:`use_wgmma`'s default and for ``"auto"``'s order (``fastjl/_backends/__init__.py``)."""
    return _measured_shape(kind, dtype, batch) and _is_sm90(device)


def use_wgmma(batch: int, device: torch.device, kind: str = "rademacher", dtype=torch.bfloat16) -> bool:
    """Whether :func:`project` runs the sm_90a (wgmma) kernel: a GPU of compute capability 9.0, a
    build that has it (``_C.project_sm90``), and either ``FASTJL_CUDA_WGMMA=1`` with B >= 64 or,
    by default (the variable unset or empty), rademacher with 16-bit x and B > 64 (measured
    faster, see WGMMA_ENV); ``FASTJL_CUDA_WGMMA=0`` never.  Same plan, workspace and D-split
    order as the mma.sync kernel, so results agree to float32 rounding (not bitwise: another
    MMA order within a step) and are bitwise reproducible run to run."""
    env = os.environ.get(WGMMA_ENV, "")
    wanted = batch >= WGMMA_MIN_BATCH if env == "1" else env == "" and _measured_shape(kind, dtype, batch)
    # The device query last, once: most calls (float32, gaussian, small B) stop before it.
    return wanted and hasattr(_C, "project_sm90") and _is_sm90(device)


def _launch(kernel, args: tuple, workspace_bytes_of, sizes: tuple, device: torch.device) -> None:
    """``kernel(*args, workspace, workspace_bytes, num_sms, stream)`` on ``device``'s current
    stream, with the split-D workspace that ``workspace_bytes_of(*sizes, num_sms)`` asks for."""
    with torch.cuda.device(device):
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        workspace_bytes = workspace_bytes_of(*sizes, num_sms)
        # Allocated on the current stream, which is also the kernel's: the caching allocator
        # can only hand this memory out again to work ordered after the kernel.
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device) if workspace_bytes else None
        kernel(
            *args,
            workspace.data_ptr() if workspace is not None else 0,
            workspace_bytes,
            num_sms,
            torch.cuda.current_stream(device).cuda_stream,
        )


def op_availability(op: str) -> str | None:
    """Why this build of ``fastjl._C`` cannot run ``op`` (None when it can)."""
    if _C is None or not built_with_cuda(_C):
        return build_state()
    if op == "project_linear" and not hasattr(_C, "project_linear"):
        return "fastjl._C has no project_linear kernel in this build (rebuild fastjl)"
    if op == "project_sparse" and not hasattr(_C, "project_sparse"):
        return "fastjl._C has no project_sparse kernel in this build (rebuild fastjl)"
    return None


def project_linear(
    a: torch.Tensor, g: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int, bias: bool
) -> None:
    """Writes ``x @ P[offset:offset+D, :K]`` into ``out`` (``(B, K)`` float32, any strides) for
    ``x = [G.flatten(1)]`` (``+ [g.sum(1)]`` if ``bias``), ``G_b = Σ_t g[b, t] a[b, t]ᵀ``,
    ``D = d_out·d_in (+ d_out)``, without writing ``G`` to memory: the kernel forms float32 tiles
    of ``G`` in shared memory and feeds them to the same pipeline as :func:`project` (tiles split
    into bfloat16 hi + lo, ~16 significant bits, as for float32 ``x``).  Sequences (T > 1) on a
    GPU go through bounded chunks of ``G`` instead (:mod:`.linear_chunked`: the fused producer
    measured 40x slower there).

    ``a`` ``(B, T, d_in)``, ``g`` ``(B, T, d_out)``: CUDA tensors of one dtype (float32, float16 or
    bfloat16), any strides.  Runs on the current stream of ``a``'s device; does not synchronize.
    """
    if linear_chunked.use_chunks(a.shape[1], a.device):  # sequences: see linear_chunked
        linear_chunked.project_linear(project, a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
        return
    batch, _, d_in = a.shape
    args = linear_tensor_args(a, g, out, seed=seed, kind=kind, offset=offset, bias=bias)
    sizes = (batch, d_in, g.shape[2], bias, out.shape[1])
    _launch(_C.project_linear, args, _C.project_linear_workspace_bytes, sizes, a.device)


def project_sparse(
    x: torch.Tensor, out: torch.Tensor, *, seed: int, offset: int, sparsity: int, threshold: int | None
) -> None:
    """The sparse kinds (sjlt, grass): see :mod:`.cuda_sparse` (imported lazily: it imports this
    module).  ``backend="auto"`` does not pick it yet (``fastjl/sparse.py``)."""
    from . import cuda_sparse

    cuda_sparse.project_sparse(x, out, seed=seed, offset=offset, sparsity=sparsity, threshold=threshold)


def tensor_args(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int) -> tuple:
    """The leading arguments of ``_C.project`` and ``_C.host_emulate_project``: pointers,
    dtype code, sizes and strides (in elements) of ``x`` and ``out``, seed, kind code, offset."""
    batch, dim = x.shape
    return (
        x.data_ptr(), DTYPE_CODES[x.dtype], batch, dim, x.stride(0), x.stride(1),
        out.data_ptr(), out.shape[1], out.stride(0), out.stride(1),
        seed, KIND_CODES[kind], offset,
    )  # fmt: skip


def linear_tensor_args(
    a: torch.Tensor, g: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, offset: int, bias: bool
) -> tuple:
    """The leading arguments of ``_C.project_linear`` and ``_C.host_emulate_project_linear``:
    pointers of ``a`` and ``g``, their dtype code, B, T, d_in, d_out, element strides of ``a`` and
    ``g``, then ``out``'s pointer, K and strides, seed, kind code, offset, bias."""
    batch, tokens, d_in = a.shape
    return (
        a.data_ptr(), g.data_ptr(), DTYPE_CODES[a.dtype], batch, tokens, d_in, g.shape[2],
        *a.stride(), *g.stride(),
        out.data_ptr(), out.shape[1], out.stride(0), out.stride(1),
        seed, KIND_CODES[kind], offset, bias,
    )  # fmt: skip

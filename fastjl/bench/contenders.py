"""What the benchmark compares: fastjl's backends and the dense materialized-matrix baseline.

A contender is ``(name, setup)`` where ``setup(shape, device)`` returns a callable
``run(x) -> y`` or raises ``Unavailable`` with the reason.  Setup work (such as generating a
stored matrix) is outside the timed call unless the contender's point is to include it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import fastjl


class Unavailable(Exception):
    """This contender cannot run here; the message says why."""


@dataclass(frozen=True)
class Shape:
    batch: int
    dim: int
    proj_dim: int
    kind: str
    dtype: torch.dtype
    sparsity: int = 1  # nonzeros per row of P for kind="sjlt"

    @property
    def sparse(self) -> bool:
        return self.kind in fastjl.SPARSE_KINDS

    @property
    def flops(self) -> float:
        """2·B·D·K for the dense kinds; 2·B·D·s (the nonzeros) for sjlt."""
        return 2.0 * self.batch * self.dim * (self.sparsity if self.sparse else self.proj_dim)


def fastjl_backend(name: str):
    def setup(shape: Shape, device: str):
        status = fastjl.backends(device)[name]
        if not status.available:
            raise Unavailable(status.reason)
        if shape.sparse and name == "cuda":
            # The sparse kernel (csrc/sparse_kernel.cu) needs a build of fastjl._C that has it.
            from fastjl._backends import cuda_backend

            reason = cuda_backend.op_availability("project_sparse")
            if reason is not None:
                raise Unavailable(reason)
        if shape.sparse and name == "triton" and device != "cuda":
            # On CPU the kernel runs only in Triton's interpreter (numpy, for tests): not a timing.
            raise Unavailable("the Triton sparse kernel is timed on CUDA tensors only")
        out = torch.empty(shape.batch, shape.proj_dim, device=device)
        extra = dict(sparsity=shape.sparsity) if shape.sparse else {}
        return lambda x: fastjl.project(x, shape.proj_dim, kind=shape.kind, out=out, backend=name, **extra)

    return setup


def _random_matrix(shape: Shape, device: str, generator: torch.Generator) -> torch.Tensor:
    """A dense (D, K) matrix drawn with torch's RNG, as TRAK's BasicProjector does."""
    p = torch.empty(shape.dim, shape.proj_dim, device=device, dtype=_matmul_dtype(shape, device))
    if shape.kind == "rademacher":
        return p.bernoulli_(0.5, generator=generator).mul_(2).sub_(1)
    return p.normal_(generator=generator)


def _matmul_dtype(shape: Shape, device: str) -> torch.dtype:
    # On GPU the stored matrix shares the input's 16-bit dtype (the tensor-core ceiling);
    # CPU matmuls run in float32.
    return shape.dtype if device == "cuda" else torch.float32


def _check_fits(shape: Shape, device: str) -> None:
    needed = shape.dim * shape.proj_dim * torch.finfo(_matmul_dtype(shape, device)).bits // 8
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > 0.6 * free:
        raise Unavailable(f"a stored {shape.dim} x {shape.proj_dim} matrix needs {needed / 2**30:.1f} GiB")


def _dense_only(shape: Shape) -> None:
    if shape.sparse:
        raise Unavailable("a dense stored matrix is the baseline of the dense kinds (sparse: index-add)")


def dense_stored(shape: Shape, device: str):
    """Matmul with a matrix generated before timing: the ceiling for a stored matrix."""
    _dense_only(shape)
    _check_fits(shape, device)
    p = _random_matrix(shape, device, torch.Generator(device=device).manual_seed(0))
    return lambda x: x.to(p.dtype) @ p


def dense_generated(shape: Shape, device: str):
    """Generate the dense matrix with torch's RNG, then multiply: TRAK's BasicProjector."""
    _dense_only(shape)
    _check_fits(shape, device)
    gen = torch.Generator(device=device).manual_seed(0)
    return lambda x: x.to(_matmul_dtype(shape, device)) @ _random_matrix(shape, device, gen)


def fast_jl_peer(shape: Shape, device: str):
    """TRAK's fast_jl kernel, called as traker's CudaProjector calls it (when installed)."""
    try:
        import fast_jl
    except ImportError as exc:
        raise Unavailable(f"fast_jl is not installed ({exc})") from None
    if device != "cuda":
        raise Unavailable("fast_jl runs on CUDA tensors only")
    if shape.sparse:
        raise Unavailable("fast_jl has dense kinds only")
    if shape.dtype != torch.float16:
        raise Unavailable(f"fast_jl supports float16 inputs only, not {shape.dtype}")
    if shape.proj_dim % 512:
        raise Unavailable(f"fast_jl needs K to be a multiple of 512, got {shape.proj_dim}")
    width = 8 if shape.batch <= 8 else 16 if shape.batch <= 16 else 32
    kind = {"rademacher": "rademacher", "gaussian": "normal"}[shape.kind]
    fn = getattr(fast_jl, f"project_{kind}_{width}")
    num_sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return lambda x: fn(x, shape.proj_dim, 0, num_sms)


def index_add_stored(shape: Shape, device: str):
    """kind="sjlt" the way the sjlt package computes it: each input row's bucket and sign stored
    beforehand (not timed; the same buckets as fastjl's), then ``index_add_`` of the signed
    columns of x, once per nonzero."""
    if not shape.sparse:
        raise Unavailable("index-add is the baseline of the sparse kinds")
    from fastjl.sparse_blocks import sjlt_block

    columns, negative = sjlt_block(0, 0, shape.dim, shape.proj_dim, shape.sparsity, device)
    signs = 1 - 2 * negative.float()  # unscaled, as fastjl.project without scale

    def run(x):
        y = torch.zeros(x.shape[0], shape.proj_dim, device=device)
        for t in range(shape.sparsity):
            y.index_add_(1, columns[:, t], x.float() * signs[:, t])
        return y

    return run


def sjlt_peer(shape: Shape, device: str):
    """The ``sjlt`` package (TRAIS-Lab, GraSS), as dattri calls it: ``SJLTProjection(D, K, c=s)``
    with its own stored buckets and signs (drawn by torch's RNG at setup, not timed), float32
    atomics into the output.  A trial call on the benchmark's dtype at setup turns an unsupported
    dtype into a reason instead of a crash mid-table."""
    if not shape.sparse:
        raise Unavailable("sjlt has the sparse kind only")
    if device != "cuda":
        raise Unavailable("the sjlt package runs on CUDA only")
    try:
        import sjlt
    except ImportError as exc:
        raise Unavailable(f"sjlt is not installed ({exc})") from None
    try:
        proj = sjlt.SJLTProjection(shape.dim, shape.proj_dim, c=shape.sparsity, device=device)
        proj(torch.randn(2, shape.dim, device=device, dtype=shape.dtype))
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 -- any failure of the peer is a reason to print
        raise Unavailable(f"sjlt failed on {shape.dtype}: {exc}") from None
    return proj


CONTENDERS = {
    "fastjl-cuda": fastjl_backend("cuda"),
    "fastjl-triton": fastjl_backend("triton"),
    "fastjl-torch": fastjl_backend("torch"),
    "fast_jl": fast_jl_peer,
    "dense-stored": dense_stored,
    "dense-generated": dense_generated,
    "index-add": index_add_stored,
    "sjlt": sjlt_peer,
}

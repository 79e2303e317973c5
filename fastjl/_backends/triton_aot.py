"""Ahead-of-time compiles of every Triton kernel configuration the backend can launch.

Triton's interpreter (how CI runs the kernels) checks none of what the GPU compiler checks:
globals read inside ``@triton.jit`` code, layouts that a target's MMA path rejects, register
pressure.  ``triton.compile(..., target=GPUTarget("cuda", cc, 32))`` runs the real compiler
for a GPU that need not be present, so these faults show on a CPU machine.

``configs()`` enumerates the launch plan's choices (kind x input dtype x batch tile, for
``project`` and ``project_linear``, plus the split reduction); ``compile_config`` compiles
one for a compute capability and returns its resource use and the PTX instruction counts
that tell whether the random-number generation is where it should be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}


@dataclass(frozen=True)
class KernelConfig:
    op: str  # "project", "project_rows" (the same kernel reading row indices), "project_linear",
    # "project_sparse" (kind sjlt/grass: one kernel) or "sum_splits"
    kind: str = "rademacher"
    dtype: str = "float32"  # the input's dtype
    block_b: int = 16
    sparsity: int = 1  # project_sparse: nonzeros per row (sets the chunk's rows, 4096 / s)
    block_k: int = 0  # project_sparse: columns per program

    @property
    def name(self) -> str:
        if self.op == "sum_splits":
            return "sum_splits"
        if self.op == "project_sparse":
            return f"{self.op}-s{self.sparsity}-{self.dtype}-K{self.block_k}"
        return f"{self.op}-{self.kind}-{self.dtype}-B{self.block_b}"


@dataclass(frozen=True)
class CompileReport:
    config: KernelConfig
    cc: int
    registers: int
    spills: int  # bytes spilled to local memory (Triton's n_spills)
    shared_bytes: int
    mul_hi: int  # mul.hi.u32 in the PTX: 10 per Philox call
    ptx_lines: int

    def __str__(self) -> str:
        return (
            f"sm_{self.cc} {self.config.name:40s} regs {self.registers:3d} spills {self.spills:5d} "
            f"smem {self.shared_bytes:6d} mul.hi {self.mul_hi:5d}"
        )


def block_sizes(op: str = "project") -> tuple[int, ...]:
    """Every BLOCK_B the GPU launch plan (``triton_backend._config``) can pick for ``op``."""
    import torch

    from .triton_backend import LINEAR_MAX_BLOCK_B, _config

    cap = LINEAR_MAX_BLOCK_B if op == "project_linear" else 128
    batches = (1, 16, 17, 32, 33, 64, 65, 4096)
    return tuple(sorted({_config(b, 2048, torch.device("cuda"), max_block_b=cap)["BLOCK_B"] for b in batches}))


def configs() -> list[KernelConfig]:
    out = []
    for op in ("project", "project_rows", "project_linear"):
        for kind in ("rademacher", "gaussian"):
            for dtype in ("float32", "float16", "bfloat16"):
                for block_b in block_sizes(op):
                    out.append(KernelConfig(op, kind, dtype, block_b))
    out.append(KernelConfig("sum_splits"))
    return out + sparse_configs()


def sparse_configs() -> list[KernelConfig]:
    """The sparse kernel at the plan's extremes (``triton_sparse.plan``): the widest column tile
    (4096, the most registers) for every input dtype and sparsity (the chunk's rows, 4096 / s),
    and the narrowest (16) and a middle one (512); one batch row per program, always."""
    dims = [("float32", s, 4096) for s in (1, 2, 4, 8)]
    dims += [(d, 1, 4096) for d in ("float16", "bfloat16")]
    dims += [("float32", 1, 16), ("float32", 8, 16), ("bfloat16", 1, 512)]
    return [KernelConfig("project_sparse", "sjlt", d, 1, s, k) for d, s, k in dims]


def launch_config(cfg: KernelConfig) -> dict:
    """The tile sizes and launch options ``triton_backend`` uses for ``cfg``."""
    import torch

    from . import triton_backend as tb

    tiles = tb.linear_tiles(cfg.kind) if cfg.op == "project_linear" else tb.project_tiles(cfg.kind)
    launch = tb._config(cfg.block_b, 2048, torch.device("cuda"), **tiles)
    assert launch["BLOCK_B"] == cfg.block_b, (cfg, launch)
    return launch


# The arguments the JIT finds 16-divisible (pointers: 16-byte aligned) in a launch of the
# dense project kernel on contiguous x at the headline shapes (B, D, K multiples of 16, offset 0).
_CONTIGUOUS_PROJECT_ALIGNED = ("x_ptr", "dest_ptr", "B", "D", "K", "stride_xb", "stride_ds", "stride_db",
                               "offset", "d_per_split")


def _divisible_by_16(fn, names) -> dict:
    """ASTSource attributes marking the arguments ``names`` of ``fn`` 16-divisible, as the JIT
    marks a launch's 16-byte aligned pointers and 16-divisible integers."""
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in names}


def _source(cfg: KernelConfig, contiguous: bool = False):
    """(ASTSource, launch options) for ``cfg`` as ``triton_backend`` would launch it.
    ``contiguous``: as the JIT specializes the dense project kernel for contiguous, aligned x at
    the headline shapes (unit stride along D a constant, 16-divisible pointers and sizes): the
    kernel that runs in the common case, with vector loads (the loop measure of
    ``bench/triton_loop_stats.py``).  Otherwise the generic kernel (any strides: the compile
    tests)."""
    import triton
    import triton.language as tl

    from ..spec import KIND_CODES
    from . import triton_backend, triton_kernels, triton_linear_kernels

    if cfg.op == "sum_splits":
        fn = triton_kernels._sum_splits_kernel
        sig = {"parts_ptr": "*fp32", "out_ptr": "*fp32", "N": "i32", "K": "i32", "SPLITS": "i32",
               "stride_ob": "i32", "stride_ok": "i32", "BLOCK": "constexpr"}
        return triton.compiler.ASTSource(fn, sig, {"BLOCK": 1024}), {"num_warps": 4}

    if cfg.op == "project_sparse":
        return _sparse_source(cfg)
    launch = launch_config(cfg)
    opts = {n: launch.pop(n) for n in ("num_warps", "num_stages") if n in launch}
    consts = dict(launch, KIND=KIND_CODES[cfg.kind], PRECISION=triton_backend.FP32_PRECISION)
    common = {"seed": "i64", "offset": "i64", "d_per_split": "i64"}
    dest = {"stride_ds": "i32", "stride_db": "i32", "stride_dk": "i32"}
    if cfg.op in ("project", "project_rows"):
        fn = triton_kernels._project_kernel
        compute = {"float32": tl.float32, "float16": tl.float16, "bfloat16": tl.bfloat16}[cfg.dtype]
        rows = cfg.op == "project_rows"
        consts.update(COMPUTE=compute, GAUSS=cfg.kind == "gaussian", EMULATE=False, ROW_INDEX=rows)
        sig = {"x_ptr": _PTR[cfg.dtype], "dest_ptr": "*fp32", "B": "i32", "D": "i32", "K": "i32",
               "stride_xb": "i32", "stride_xd": "i32", **dest, **common,
               "row_index_ptr": "*i64" if rows else _PTR[cfg.dtype]}
        if contiguous:
            consts["stride_xd"] = 1
    else:
        fn = triton_linear_kernels._project_linear_kernel
        consts["EMULATE"] = False
        sig = {"a_ptr": _PTR[cfg.dtype], "g_ptr": _PTR[cfg.dtype], "dest_ptr": "*fp32"}
        sig.update({n: "i32" for n in ("B", "T", "D_IN", "W", "D", "K")})
        sig.update({f"stride_{t}{a}": "i32" for t, axes in (("a", "bti"), ("g", "bto")) for a in axes})
        sig.update(dest)
        sig.update(common)
    sig.update({n: "constexpr" for n in consts})
    sig = {n: sig[n] for n in fn.arg_names}  # Triton wants the kernel's argument order
    if contiguous and cfg.op in ("project", "project_rows"):
        return triton.compiler.ASTSource(fn, sig, consts, _divisible_by_16(fn, _CONTIGUOUS_PROJECT_ALIGNED)), opts
    return triton.compiler.ASTSource(fn, sig, consts), opts


def _sparse_source(cfg: KernelConfig):
    """(ASTSource, launch options) of the sparse kernel as ``triton_sparse`` launches it on a GPU."""
    import torch
    import triton

    from . import triton_sparse, triton_sparse_kernels

    launch = triton_sparse.plan(cfg.block_k, cfg.sparsity, torch.device("cuda"))
    assert launch["BLOCK_K"] == cfg.block_k, (cfg, launch)
    opts = {"num_warps": launch.pop("num_warps")}
    fn = triton_sparse_kernels._sparse_project_kernel
    sig = {"x_ptr": _PTR[cfg.dtype], "entries_ptr": "*i16", "col_ptr_ptr": "*i16", "dest_ptr": "*fp32"}
    sig.update({n: "i32" for n in fn.arg_names if n not in sig and n not in launch})
    # As the JIT specializes a launch on contiguous x: unit stride along D (a constexpr), and
    # 16-byte aligned pointers and 16-divisible pointer strides (vector loads).
    consts = dict(launch, stride_xd=1)
    sig.update({n: "constexpr" for n in consts})
    sig = {n: sig[n] for n in fn.arg_names}
    aligned = ("x_ptr", "entries_ptr", "col_ptr_ptr", "dest_ptr", "ptr_stride", "stride_xb")
    return triton.compiler.ASTSource(fn, sig, consts, _divisible_by_16(fn, aligned)), opts


def compile_kernel(cfg: KernelConfig, cc: int, contiguous: bool = False):
    """``cfg``'s kernel compiled for ``sm_<cc>`` (no GPU needed): its ``asm`` holds the PTX and
    the cubin.  ``contiguous``: the dense project kernel as specialized for contiguous x (see
    ``_source``).  Raises on any compile error."""
    import triton
    from triton.backends.compiler import GPUTarget

    src, opts = _source(cfg, contiguous)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options=opts)


def compile_config(cfg: KernelConfig, cc: int) -> CompileReport:
    """Compile ``cfg`` for ``sm_<cc>`` (no GPU needed); raises on any compile error."""
    kernel = compile_kernel(cfg, cc)
    ptx = kernel.asm["ptx"]
    meta = kernel.metadata
    n_regs, n_spills = _resources(kernel, ptx)
    return CompileReport(
        config=cfg,
        cc=cc,
        registers=n_regs,
        spills=n_spills,
        shared_bytes=int(getattr(meta, "shared", 0)),
        mul_hi=len(re.findall(r"\bmul\.hi\.u32\b", ptx)),
        ptx_lines=ptx.count("\n"),
    )


def _resources(kernel, ptx: str) -> tuple[int, int]:
    """(registers, spill bytes) from ptxas, which ``triton.compile`` ran to make the cubin."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    arch = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    try:
        ptxas = get_ptxas(int(re.sub(r"\D", "", arch)))  # newer Tritons pick ptxas by target
    except TypeError:
        ptxas = get_ptxas()
    path = ptxas.path if hasattr(ptxas, "path") else ptxas[0]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        res = subprocess.run([path, "-v", f"--gpu-name={arch}", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True, check=True)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spills = [int(m) for m in re.findall(r"(\d+) bytes spill stores", res.stderr)]
    return int(regs.group(1)) if regs else -1, max(spills, default=0)


def _compile_or_error(cfg: KernelConfig, cc: int):
    try:
        return compile_config(cfg, cc)
    except Exception as exc:  # noqa: BLE001 - the caller reports every failure
        lines = str(exc).strip().splitlines() or [""]
        return f"{type(exc).__name__}: {lines[-1][:300]}"


def _real_compiler() -> None:
    import os

    os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be defined as real jit functions


def compile_all(ccs=(80, 90), workers: int | None = None) -> dict:
    """``{(config name, cc): CompileReport, or the error text}`` for every launchable config.

    Runs in fresh processes (spawned, with ``TRITON_INTERPRET`` removed before the kernels
    are defined, so this works from an interpreter-mode test session), ``workers`` at a time.
    """
    import concurrent.futures
    import multiprocessing
    import os

    jobs = [(cfg, cc) for cc in ccs for cfg in configs()]
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_real_compiler) as pool:
        futures = {pool.submit(_compile_or_error, cfg, cc): (cfg.name, cc) for cfg, cc in jobs}
        return {futures[f]: f.result() for f in concurrent.futures.as_completed(futures)}


def main() -> int:
    """``python -m fastjl._backends.triton_aot [cc ...]``: the compile report of every config."""
    import sys

    ccs = tuple(int(a) for a in sys.argv[1:]) or (80, 90)
    results = compile_all(ccs)
    failed = 0
    for (name, cc), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(r if isinstance(r, CompileReport) else f"sm_{cc} {name:40s} FAILED {r}")
        failed += not isinstance(r, CompileReport)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

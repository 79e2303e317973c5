"""``python -m fastjl.check``: does fastjl compute the right numbers on this machine?

Runs every available backend (torch, triton, cuda) on ``project`` and ``project_linear``
(rademacher and gaussian; sjlt and grass on the backends that have them; float32, float16
and bfloat16 inputs; odd B, D and K that cross every tile boundary; strided and transposed
layouts; a row offset past 2^40) against a float64 reference computed on the CPU, on fresh
random inputs (``--seed`` repeats a run).
Outputs are NaN-filled ``out=`` buffers, so an element a kernel forgets to write fails the
case.  Prints one line per case and a summary; exit status 0 when every case that ran
passed, 1 when any failed, 2 on bad arguments.

On a CPU only the torch backend runs, unless ``--triton-interpret`` also runs Triton's
kernels in its interpreter (small shapes only: it is slow).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
import time
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

import fastjl
from fastjl import _backends
from fastjl.devices import device_option_error
from fastjl.sparse_spec import SPARSE_KINDS, sparse_matrix_block
from fastjl.spec import KINDS as DENSE_KINDS
from fastjl.spec import matrix_block

KINDS = DENSE_KINDS + SPARSE_KINDS  # every kind fastjl.project checks

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (F32, F16, BF16)
DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in DTYPES}


def _same(bound: float) -> dict:
    return {(kind, dtype): bound for kind in KINDS for dtype in DTYPES}


# Bound on the relative Frobenius error ||y - ref|| / ||ref|| (see Reference) per (backend, op) and
# (kind, input dtype).  "triton-interpret" is Triton's interpreter on CPU tensors (exact float32
# products), "triton" its compiled kernels on a GPU (tf32 dots for float32 data by default).
# The only table of bounds in this module: adjust here after GPU measurements.
TF32_WORST = 2.0**-9  # two operands rounded to tf32's 10 mantissa bits
BOUNDS = {
    # tests/helpers.py TOLERANCE (float32 accumulation of exact or float32 products)
    ("torch", "project"): _same(1e-5),
    ("torch", "project_linear"): _same(1e-5),
    # tests/test_cuda_backend.py TOLERANCE
    ("cuda", "project"): {
        **_same(1e-6),
        ("rademacher", F32): 1e-4,
        ("gaussian", F32): 1e-4,
        ("gaussian", BF16): 3e-5,
    },
    # tests/test_cuda_linear.py TOLERANCE
    ("cuda", "project_linear"): _same(1e-4),
    # tests/test_triton.py TOLERANCE with ON_GPU, except float32: tl.dot's tf32 path keeps 10
    # mantissa bits of both operands, so one product can be off by up to 2^-9 (an H100 measured
    # 1.2e-3 on a single-element project_linear, 2026-11-27); wider outputs average to ~3e-4.
    ("triton", "project"): {
        **_same(1e-6),
        ("rademacher", F32): TF32_WORST,
        ("gaussian", F32): TF32_WORST,
        ("gaussian", BF16): 3e-5,
    },
    # tests/test_triton_linear.py bounds elementwise, not in Frobenius norm: its G tiles always
    # take tl.dot's float32 path (tf32 on a GPU), so the float32 bound of project on a GPU.
    ("triton", "project_linear"): _same(TF32_WORST),
    # tests/test_triton.py TOLERANCE without a GPU
    ("triton-interpret", "project"): {**_same(1e-6), ("gaussian", BF16): 3e-5},
    # tests/test_triton_linear.py's elementwise worst case in the interpreter is ~(T + D) 2^-24
    # relative plus ~6e-6 per gaussian entry; for the interpreted shapes (D <= 200) 1e-5.
    ("triton-interpret", "project_linear"): _same(1e-5),
}

# The bounds hold for D <= BOUND_DIM rows.  Rounding errors of float32 sums grow like sqrt(D)
# (random walk), so longer D scale them by sqrt(D / BOUND_DIM): the torch backend measured
# 7e-6 at D = 10^5, K = 5 and 1.4e-5 at D = 10^6, K = 100 (2-core CPU, float32 input).
BOUND_DIM = 10**4


def bound(backend_key: str, op: str, kind: str, dtype: torch.dtype, dim: int) -> float:
    return BOUNDS[backend_key, op][kind, dtype] * max(1.0, math.sqrt(dim / BOUND_DIM))


OFFSET = 2**40 + 3
# Entries of P (D * K) up to which the reference is the entry-wise spec (fastjl.matrix_block);
# above, the torch backend run in float64 on the CPU (a separate generator, fastjl.blocks).
EXACT_REFERENCE_MAX = 5 * 10**6


class Shape(NamedTuple):
    """One input shape: ``project`` uses (batch, dim); ``project_linear`` (batch, steps,
    d_in, d_out, bias), its D being d_out * d_in (+ d_out)."""

    batch: int
    proj_dim: int
    dim: int = 0
    steps: int = 0
    d_in: int = 0
    d_out: int = 0
    bias: bool = False
    layouts: tuple[str, ...] = ("contiguous",)
    offset: int = OFFSET
    kinds: tuple[str, ...] = DENSE_KINDS
    sparsity: int = 1  # nonzeros per row of P for the sparse kinds


# GraSS's keep rate in every check (a pure function of the row: any rate tests the same code).
GRASS_RATE = 0.5


def proj_shape(batch, dim, proj_dim, **kw) -> Shape:
    return Shape(batch, proj_dim, dim=dim, **kw)


def linear_shape(batch, steps, d_in, d_out, proj_dim, bias, **kw) -> Shape:
    return Shape(batch, proj_dim, steps=steps, d_in=d_in, d_out=d_out, bias=bias, **kw)


LAYOUTS = ("contiguous", "strided", "transposed")
# Tiles crossed: Triton B 16/32/64/128, D 16 (interpreter) or 64, K 128, and the interpreter
# splits D above 64 rows; CUDA B 32/64/128, D 32, K 128.  "tiny" runs everywhere (the Triton
# interpreter included), "medium" too except in the interpreter and with --quick, "split"
# (D split across many GPU programs) on a GPU only.  The gaussian float64 reference costs
# ~25x more per entry than rademacher's on the CPU, hence its smaller K at D ~ 10^6.
SHAPES = {
    "project": {
        "tiny": [
            proj_shape(1, 1, 1, offset=0),
            proj_shape(7, 101, 130, layouts=LAYOUTS),
            proj_shape(17, 33, 257),
            proj_shape(7, 101, 130, layouts=LAYOUTS, kinds=SPARSE_KINDS, sparsity=4),
            proj_shape(3, 1, 8, offset=0, kinds=SPARSE_KINDS, sparsity=8),
        ],
        "medium": [
            proj_shape(33, 1001, 4097),
            proj_shape(130, 1001, 100),
            proj_shape(1000, 1, 1),
            proj_shape(3, 100_003, 5),
            proj_shape(33, 10_001, 513, kinds=SPARSE_KINDS),
            proj_shape(5, 100_003, 37, kinds=SPARSE_KINDS, sparsity=2),
        ],
        "split": [
            proj_shape(130, 100_003, 100, kinds=("rademacher",)),
            proj_shape(130, 100_003, 4, kinds=("gaussian",)),
            proj_shape(7, 10**6 + 3, 100, kinds=("rademacher",), layouts=("contiguous", "strided")),
            proj_shape(7, 10**6 + 3, 7, kinds=("gaussian",), layouts=("contiguous", "strided")),
        ],
    },
    "project_linear": {
        "tiny": [
            linear_shape(1, 1, 1, 1, 1, False, offset=0),
            linear_shape(7, 2, 11, 9, 130, True, layouts=("contiguous", "strided")),
            linear_shape(17, 3, 3, 2, 129, False),
        ],
        "medium": [
            linear_shape(33, 5, 64, 48, 257, True),
            linear_shape(130, 1, 31, 9, 100, False),
            linear_shape(2, 3, 1000, 100, 5, True),
        ],
        "split": [
            linear_shape(3, 2, 1000, 1000, 100, True, kinds=("rademacher",)),
            linear_shape(3, 2, 1000, 1000, 7, False, kinds=("gaussian",)),
        ],
    },
}


def shape_tiers(device: torch.device, quick: bool, interpreted: bool) -> tuple[str, ...]:
    if interpreted:
        return ("tiny",)
    if device.type == "cuda":
        return ("tiny", "split") if quick else ("tiny", "medium", "split")
    return ("tiny",) if quick else ("tiny", "medium")


@dataclass(frozen=True)
class Problem:
    """One (op, kind, shape): its random inputs and reference serve every dtype, layout and
    backend."""

    op: str
    kind: str
    shape: Shape

    @property
    def dim(self) -> int:
        s = self.shape
        return s.dim if self.op == "project" else s.d_out * s.d_in + (s.d_out if s.bias else 0)


@dataclass
class Result:
    passed: bool
    line: str


# ---------------------------------------------------------------- which backends run


def interpreted(backend: str, device: torch.device) -> bool:
    return backend == "triton" and device.type == "cpu"


def plan_backends(device: torch.device, requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """The backends to run, and why each of the others does not run."""
    status = fastjl.backends(device)
    run, skipped = [], {}
    for name, st in status.items():
        if name not in requested:
            skipped[name] = "not requested (--backends)"
        elif not st.available:
            hint = " or pass --triton-interpret" if name == "triton" and device.type == "cpu" else ""
            skipped[name] = st.reason + hint
        else:
            run.append(name)
    return run, skipped


def op_unavailable(backend: str, device: torch.device, op: str) -> str | None:
    """Why ``backend`` cannot run ``op`` here (e.g. a build without project_linear), or None."""
    try:
        _backends.select(backend, device, op)
    except RuntimeError as exc:
        return str(exc)
    return None


def problems_for(backend: str, device: torch.device, quick: bool) -> list[Problem]:
    """Every (op, kind, shape) that ``backend`` runs here, in table order."""
    tiers = shape_tiers(device, quick, interpreted(backend, device))
    return [
        Problem(op, kind, shape)
        for op, table in SHAPES.items()
        if not op_unavailable(backend, device, op)
        for tier in tiers
        for shape in table[tier]
        for kind in shape.kinds
        if kind not in SPARSE_KINDS or not op_unavailable(backend, device, "project_sparse")
    ]


# ---------------------------------------------------------------- inputs and references


def generator(seed: int, problem: Problem) -> torch.Generator:
    """A generator for ``problem`` derived from the run's seed (same inputs for a rerun)."""
    tag = zlib.crc32(repr((problem.op, problem.kind, tuple(problem.shape))).encode())
    return torch.Generator().manual_seed((seed * 2**32 + tag) % 2**63)


def random_inputs(problem: Problem, gen: torch.Generator) -> dict[torch.dtype, tuple[torch.Tensor, ...]]:
    """Fresh standard-normal float32 inputs on the CPU, rounded to each dtype:
    ``(x,)`` for project, ``(a, g)`` for project_linear."""
    s = problem.shape
    if problem.op == "project":
        base = (torch.randn(s.batch, s.dim, generator=gen),)
    else:
        a = torch.randn(s.batch, s.steps, s.d_in, generator=gen)
        base = (a, torch.randn(s.batch, s.steps, s.d_out, generator=gen))
    return {dtype: tuple(t.to(dtype) for t in base) for dtype in DTYPES}


def linear_gradients(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """Per-example Linear gradients ``[G.flatten(1), sum_t g]`` formed explicitly in float64."""
    grads = torch.einsum("bto,bti->boi", g.double(), a.double()).flatten(1)
    return torch.cat([grads, g.double().sum(1)], dim=1) if bias else grads


def float64_projection(
    x: torch.Tensor, proj_dim: int, *, seed: int, kind: str, offset: int, sparsity: int = 1
) -> torch.Tensor:
    """``x @ P`` in float64 on the CPU: the entry-wise spec when P is small enough, else the
    torch backend in float64 (the sparse kinds: always their spec's dense matrix)."""
    dim = x.shape[1]
    if kind in SPARSE_KINDS:
        rate = GRASS_RATE if kind == "grass" else None
        rows = range(offset, offset + dim)
        return x @ sparse_matrix_block(seed, kind, rows, proj_dim, sparsity=sparsity, mask_rate=rate)
    if dim * proj_dim <= EXACT_REFERENCE_MAX:
        return x @ matrix_block(seed, kind, range(offset, offset + dim), range(proj_dim))
    return fastjl.project(x, proj_dim, seed=seed, kind=kind, offset=offset, backend="torch")


class Reference(NamedTuple):
    """The float64 result and the norm errors are relative to: ``max(||ref||, ||x|| sqrt(K))``,
    ``||x|| sqrt(K)`` being ``||ref||``'s expected value (E P_ij^2 = 1; sqrt(s) for sjlt,
    sqrt(s rate) for grass).  It equals ``||ref||``
    unless ``x @ P`` cancels: with one output (B = K = 1, say) a gaussian entry near 0 would
    otherwise turn its float32 rounding into a large relative error."""

    values: torch.Tensor
    norm: float


def references(problem: Problem, inputs: dict, seed: int) -> dict[torch.dtype, Reference]:
    """The float64 reference for every dtype's (rounded) inputs, in one stacked projection."""
    s = problem.shape
    if problem.op == "project":
        rows = [x.double() for (x,) in inputs.values()]
    else:
        rows = [linear_gradients(a, g, s.bias) for a, g in inputs.values()]
    ref = float64_projection(
        torch.cat(rows), s.proj_dim, seed=seed, kind=problem.kind, offset=s.offset, sparsity=s.sparsity
    )
    # E||xP||^2 / ||x||^2: K for the dense kinds (E P_ij^2 = 1), s for sjlt, s * rate for grass
    gain = {"sjlt": s.sparsity, "grass": s.sparsity * GRASS_RATE}.get(problem.kind, s.proj_dim)
    expected = [x.norm().item() * math.sqrt(gain) for x in rows]
    return {
        dtype: Reference(values, max(values.norm().item(), norm, 1e-300))
        for dtype, values, norm in zip(inputs, ref.split(s.batch), expected)
    }


# ---------------------------------------------------------------- layouts


def strided_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` as every other column (last dim) of a wider tensor whose other columns hold a
    large value: a kernel reading them gives a large error."""
    wide = torch.full((*t.shape[:-1], 2 * t.shape[-1]), 1000.0, dtype=t.dtype, device=device)
    wide[..., ::2] = t.to(device)
    return wide[..., ::2]


def transposed_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` with its last two dims stored transposed (unit stride along the second-to-last)."""
    return t.transpose(-1, -2).contiguous().to(device).transpose(-1, -2)


def laid_out(problem: Problem, layout: str, tensors: tuple, device: torch.device) -> tuple:
    """The inputs on ``device`` in ``layout``; project_linear's "strided" is a strided ``a``
    and a transposed ``g``."""
    if layout == "contiguous":
        return tuple(t.to(device) for t in tensors)
    if layout == "transposed":
        return tuple(transposed_copy(t, device) for t in tensors)
    if problem.op == "project":
        return (strided_copy(tensors[0], device),)
    return strided_copy(tensors[0], device), transposed_copy(tensors[1], device)


def poisoned_out(batch: int, proj_dim: int, layout: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A NaN-filled ``(B, K)`` float32 output (stored transposed unless the layout is
    contiguous) and its storage."""
    if layout == "contiguous":
        out = torch.full((batch, proj_dim), float("nan"), device=device)
        return out, out
    storage = torch.full((proj_dim, batch), float("nan"), device=device)
    return storage.t(), storage


# ---------------------------------------------------------------- one case


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call(problem: Problem, backend: str, inputs: tuple, out: torch.Tensor, seed: int) -> torch.Tensor:
    kw = dict(seed=seed, kind=problem.kind, offset=problem.shape.offset, out=out, backend=backend)
    if problem.kind in SPARSE_KINDS:
        kw.update(sparsity=problem.shape.sparsity, mask_rate=GRASS_RATE if problem.kind == "grass" else None)
    if problem.op == "project":
        return fastjl.project(inputs[0], problem.shape.proj_dim, **kw)
    a, g = inputs
    return fastjl.project_linear(a, g, problem.shape.proj_dim, bias=problem.shape.bias, **kw)


def verdict(y, out: torch.Tensor, storage: torch.Tensor, ref: Reference, limit: float) -> tuple[bool, str]:
    """Pass or fail, and what was measured."""
    if y is not out:
        return False, "did not return the out= tensor"
    if y.shape != ref.values.shape or y.dtype != torch.float32:
        return False, f"wrong output: shape {tuple(y.shape)} {y.dtype}, expected {tuple(ref.values.shape)} float32"
    bad = int((~torch.isfinite(storage)).sum())
    if bad:
        return False, f"{bad} of {storage.numel()} output elements NaN/inf (unwritten or non-finite)"
    err = (y.cpu().double() - ref.values).norm().item() / ref.norm
    return err <= limit, f"err={err:.1e} bound={limit:.2g}"


def describe(problem: Problem, backend: str, dtype: torch.dtype, layout: str) -> str:
    s = problem.shape
    if problem.op == "project":
        size = f"B={s.batch} D={s.dim} K={s.proj_dim}" + (f" s={s.sparsity}" if problem.kind in SPARSE_KINDS else "")
    else:
        bias = " bias" if s.bias else ""
        size = f"B={s.batch} T={s.steps} d_in={s.d_in} d_out={s.d_out}{bias} (D={problem.dim}) K={s.proj_dim}"
    offset = "2^40+3" if s.offset == OFFSET else str(s.offset)
    dtype_name = str(dtype).removeprefix("torch.")
    return f"{backend:7s} {problem.op:14s} {problem.kind:10s} {dtype_name:8s} {size} offset={offset} {layout:10s}"


def run_case(problem, backend, dtype, layout, inputs, ref, seed, device) -> Result:
    """Runs one backend on one dtype and layout of ``problem``; exceptions fail the case."""
    label = describe(problem, backend, dtype, layout)
    key = "triton-interpret" if interpreted(backend, device) else backend
    limit = bound(key, problem.op, problem.kind, dtype, problem.dim)
    try:
        args = laid_out(problem, layout, inputs, device)
        out, storage = poisoned_out(problem.shape.batch, problem.shape.proj_dim, layout, device)
        synchronize(device)
        start = time.perf_counter()
        y = call(problem, backend, args, out, seed)
        synchronize(device)
        ms = (time.perf_counter() - start) * 1e3
        passed, detail = verdict(y, out, storage, ref, limit)
    except Exception as exc:  # a failing kernel (compile error, launch failure) is a failed case
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return Result(False, f"FAIL {label} error: {type(exc).__name__}: {first_line}")
    return Result(passed, f"{'PASS' if passed else 'FAIL'} {label} {detail}  {ms:.1f} ms")


def run_problem(problem, backend, cache: dict, seed: int, proj_seed: int, device, dtypes=DTYPES) -> list[Result]:
    """Every dtype (of ``dtypes``) x layout of ``problem`` on ``backend``; inputs and reference
    are made once per problem (``cache``) and shared by the backends."""
    if problem not in cache:
        inputs = random_inputs(problem, generator(seed, problem))
        cache[problem] = inputs, references(problem, inputs, proj_seed)
    inputs, refs = cache[problem]
    results = []
    for dtype in dtypes:
        for layout in problem.shape.layouts:
            result = run_case(problem, backend, dtype, layout, inputs[dtype], refs[dtype], proj_seed, device)
            print(result.line, flush=True)
            results.append(result)
    return results


# ---------------------------------------------------------------- command line


def projection_seed(seed: int) -> int:
    """A 64-bit projection seed from the run's seed, top bit set (Philox's second key word
    is exercised)."""
    return (seed * 0x9E3779B97F4A7C15) % 2**64 | 1 << 63


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m fastjl.check",
        description="Checks every fastjl backend that can run here against a float64 reference on fresh random "
        "inputs; exit status 0 when all cases pass, 1 when any fails.",
    )
    p.add_argument("--backends", default=",".join(_backends.BACKEND_NAMES), help="comma-separated subset to run")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when torch sees a GPU, else cpu")
    p.add_argument("--quick", action="store_true", help="a smaller set of shapes")
    dtype_names = ",".join(DTYPE_NAMES)
    p.add_argument("--dtypes", default=dtype_names, help=f"comma-separated subset of {dtype_names} (inputs' dtype)")
    p.add_argument("--seed", type=int, help="seed of the random inputs (default: a new one per run)")
    p.add_argument(
        "--triton-interpret",
        action="store_true",
        help="CPU only: set TRITON_INTERPRET=1 and run the Triton backend in its interpreter (small shapes)",
    )
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in _backends.BACKEND_NAMES]
    if unknown or not args.backends:
        p.error(f"--backends takes a comma-separated subset of {','.join(_backends.BACKEND_NAMES)}, got {unknown}")
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPE_NAMES]
    if unknown or not args.dtypes:
        p.error(f"--dtypes takes a comma-separated subset of {dtype_names}, got {unknown or args.dtypes}")
    args.dtypes = [DTYPE_NAMES[d] for d in dict.fromkeys(args.dtypes)]
    if args.seed is not None and args.seed < 0:
        p.error("--seed must be >= 0")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_option_error("fastjl.check", args.device)
    if problem:
        p.error(problem)
    if args.triton_interpret and args.device != "cpu":
        p.error("--triton-interpret runs Triton on CPU tensors: use it with --device cpu")
    if args.device == "cuda" and os.environ.get("TRITON_INTERPRET") == "1":
        p.error("TRITON_INTERPRET=1 is set: Triton would interpret its kernels, not compile them; unset it")
    if args.triton_interpret and not enable_triton_interpreter():
        p.error("--triton-interpret: fastjl's Triton kernels were already compiled for the GPU in this process")
    return args


def enable_triton_interpreter() -> bool:
    """Sets ``TRITON_INTERPRET=1`` before fastjl's Triton kernels are imported (``triton.jit``
    reads it when they are decorated; triton_backend imports them lazily).  False if too late."""
    kernels = ("fastjl._backends.triton_kernels", "fastjl._backends.triton_linear_kernels")
    if os.environ.get("TRITON_INTERPRET") != "1" and any(m in sys.modules for m in kernels):
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def print_header(device: torch.device, run: list[str], skipped: dict[str, str], seed: int, proj_seed: int) -> None:
    print(f"fastjl {fastjl.__version__} check on {device}, torch {torch.__version__}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"seed {seed} (rerun with --seed {seed}); projection seed {proj_seed}")
    interpreter = " (triton in its interpreter)" if "triton" in run and device.type == "cpu" else ""
    print(f"running: {', '.join(run) or 'nothing'}{interpreter}")
    for name, reason in skipped.items():
        print(f"NOT RUN {name}: {reason}")
    for name in run:
        for op in SHAPES:
            reason = op_unavailable(name, device, op)
            if reason:
                print(f"NOT RUN {name} {op}: {reason}")
    print(flush=True)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad arguments, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    device = torch.device(args.device)
    seed = secrets.randbelow(10**9) if args.seed is None else args.seed
    proj_seed = projection_seed(seed)
    run, skipped = plan_backends(device, args.backends)
    print_header(device, run, skipped, seed, proj_seed)
    start = time.perf_counter()
    results, cache = [], {}
    for backend in run:  # cuda first: no compile step, so its lines come first
        for problem in problems_for(backend, device, args.quick):
            results += run_problem(problem, backend, cache, seed, proj_seed, device, args.dtypes)
    failed = sum(not r.passed for r in results)
    not_run = ", ".join(f"{name} ({reason})" for name, reason in skipped.items()) or "none"
    print(f"\n{len(results) - failed} passed, {failed} failed, backends not run: {not_run}")
    print(f"seed {seed}, {time.perf_counter() - start:.1f} s")
    if not results:
        print("nothing was checked: no backend could run here")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())

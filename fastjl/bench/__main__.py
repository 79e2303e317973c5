"""``python -m fastjl.bench``: projection backends side by side on fresh random inputs.

Default on CPU: B=32, D=10^6, K=1024, fastjl's torch backend against a dense matmul with a
materialized torch-RNG matrix, timed without ("dense-stored") and with ("dense-generated",
TRAK's BasicProjector approach) generating that matrix.  On a GPU: the TRAK shapes of docs/design.md,
Benchmarks.  Prints a table; ``--save`` also writes JSON under bench/results/.

``--op linear``: ``fastjl.project_linear`` fused, against materializing the per-example
gradients and projecting them, and against the kronecker kind (see :mod:`.linear_op`).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch

import fastjl
from fastjl.devices import device_option_error

from .ceilings import measure_ceilings
from .contenders import CONTENDERS, Shape, Unavailable
from .contention import busy_processes
from .linear_contenders import LINEAR_CONTENDERS, Disagreement, default_rtol
from .linear_op import LINEAR_PLOT, LINEAR_PRESETS, format_linear_table, linear_shapes, run_linear_shape
from .memory import peak_extra_mib
from .plot import save_plot
from .results import save_json
from .timing import median_ms

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRESETS = {  # (batches, dims, proj_dims)
    "cpu": ([32], [10**6], [1024]),
    "quick": ([8], [10**5], [512]),
    "trak": ([8, 32, 128, 512], [11_000_000, 110_000_000, 1_000_000_000], [512, 2048, 8192]),
}


def _plain(text: str) -> str:
    """Docstring text as --help shows it: without reStructuredText's double backticks."""
    return text.replace("``", "")


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastjl.bench", description=_plain(__doc__.split("\n\n")[0]))
    p.add_argument("--op", default="project", choices=("project", "linear"), help="fastjl.project or project_linear")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (GPU when present)")
    p.add_argument(
        "--preset",
        choices=sorted(set(PRESETS) | set(LINEAR_PRESETS)),
        help=f"shape set (project: {', '.join(PRESETS)}, default cpu on CPU, trak on GPU; "
        f"linear: {', '.join(LINEAR_PRESETS)}, default cpu on CPU, gpt2 on GPU)",
    )
    p.add_argument("--batch", type=_ints, help="comma-separated batch sizes B (overrides the preset)")
    p.add_argument("--dim", type=_ints, help="comma-separated input dims D, e.g. 1e6")
    p.add_argument("--proj-dim", type=_ints, help="comma-separated output dims K")
    p.add_argument("--tokens", type=_ints, help="linear: comma-separated tokens per example T")
    p.add_argument("--d-in", type=_ints, help="linear: comma-separated layer input widths")
    p.add_argument("--d-out", type=_ints, help="linear: comma-separated layer output widths")
    p.add_argument("--kind", default="rademacher", choices=fastjl.KINDS + ("sjlt",))
    p.add_argument("--sparsity", type=int, default=1, choices=fastjl.SPARSITIES, help="sjlt: nonzeros per row of P")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: float32 on CPU, bfloat16 on GPU")
    p.add_argument(
        "--contenders",
        help=f"comma-separated subset of (project) {', '.join(CONTENDERS)}; (linear) {', '.join(LINEAR_CONTENDERS)}",
    )
    p.add_argument("--rtol", type=float, help="linear: fused vs materialize+project agreement (default: by dtype)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--input-sets", type=int, default=2, help="distinct random inputs cycled through")
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring the matmul/bandwidth ceilings")
    p.add_argument(
        "--contention",
        type=int,
        default=0,
        metavar="N",
        help="project: time every contender again with N busy processes competing for the cores; "
        "the table adds ms under load and the slowdown",
    )
    p.add_argument("--peak-memory", action="store_true", help="run fastjl-torch once per shape and report peak memory")
    p.add_argument("--save", nargs="?", const="bench/results", help="write JSON into this folder")
    return p.parse_args(argv)


def resolve_device(args) -> tuple[str, torch.dtype]:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    return device, DTYPES[args.dtype or ("bfloat16" if device == "cuda" else "float32")]


def resolve(args):
    device, dtype = resolve_device(args)
    preset = PRESETS[args.preset or ("trak" if device == "cuda" else "cpu")]
    batches, dims, proj_dims = args.batch or preset[0], args.dim or preset[1], args.proj_dim or preset[2]
    shapes = [Shape(b, d, k, args.kind, dtype, args.sparsity) for d in dims for k in proj_dims for b in batches]
    return device, shapes


def run_shape(shape: Shape, device: str, names, reps: int, input_sets: int, ceilings, contention: int = 0):
    gen = torch.Generator(device=device).manual_seed(shape.batch * 7919 + shape.proj_dim)
    inputs = [
        torch.randn(shape.batch, shape.dim, device=device, generator=gen).to(shape.dtype) for _ in range(input_sets)
    ]
    bytes_moved = shape.batch * shape.dim * inputs[0].element_size() + shape.batch * shape.proj_dim * 4
    rows = []
    for name in names:
        row = dict(contender=name, batch=shape.batch, dim=shape.dim, proj_dim=shape.proj_dim, kind=shape.kind)
        row["dtype"] = str(shape.dtype).replace("torch.", "")
        fn = None  # dropped after each contender so a stored matrix is freed before the next
        try:
            fn = CONTENDERS[name](shape, device)
            ms = median_ms(fn, inputs, device=device, reps=reps)
            if contention:
                with busy_processes(contention):
                    row["ms_busy"] = median_ms(fn, inputs, device=device, reps=reps)
                row["slowdown"] = row["ms_busy"] / ms
        except Unavailable as exc:
            row.update(ms=None, note=str(exc))
        else:
            tflops = shape.flops / (ms * 1e-3) / 1e12
            row.update(ms=ms, tflops=tflops, gbps=bytes_moved / (ms * 1e-3) / 1e9)
            if ceilings:
                row["frac_matmul"] = tflops / ceilings["matmul_tflops"]
                row["frac_bandwidth"] = row["gbps"] / ceilings["bandwidth_gbps"]
        rows.append(row)
        del fn
    return rows


def peak_memory_mib(shape: Shape, device: str) -> float:
    """Peak memory added by one fastjl-torch projection, beyond its input and output."""
    x = torch.randn(shape.batch, shape.dim, device=device).to(shape.dtype)
    out = torch.empty(shape.batch, shape.proj_dim, device=device)
    return peak_extra_mib(lambda: fastjl.project(x, shape.proj_dim, kind=shape.kind, out=out, backend="torch"), device)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU, {threads} thread{'' if threads == 1 else 's'}"


def format_table(rows) -> str:
    busy = any("ms_busy" in r for r in rows)
    head = f"{'contender':16s} {'B':>5s} {'D':>11s} {'K':>6s} {'ms':>10s} {'GFLOP/s':>10s} {'GB/s':>8s} {'%mm':>5s}"
    head += f" {'ms busy':>10s} {'slowdown':>8s}" if busy else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']:5d} {r['dim']:11d} {r['proj_dim']:6d}"
        if r["ms"] is None:
            lines.append(f"{r['contender']:16s} {shape}  unavailable: {r['note']}")
            continue
        frac = f"{100 * r['frac_matmul']:5.1f}" if "frac_matmul" in r else "    -"
        line = f"{r['contender']:16s} {shape} {r['ms']:10.2f} {1e3 * r['tflops']:10.1f} {r['gbps']:8.2f} {frac}"
        if "ms_busy" in r:
            line += f" {r['ms_busy']:10.2f} {r['slowdown']:7.2f}x"
        lines.append(line)
    return "\n".join(lines)


def contender_names(args, valid) -> list[str] | None:
    """The requested contenders, or None (after saying why) if any is unknown."""
    names = [n.strip() for n in args.contenders.split(",")] if args.contenders else list(valid)
    unknown = [n for n in names if n not in valid]
    if unknown:
        print(f"unknown contenders {unknown}; valid: {list(valid)}", file=sys.stderr)
        return None
    return names


def run_info(device: str) -> dict:
    """Device, date and versions recorded with every run (and printed as its first line)."""
    info = dict(
        device=device_name(device),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        fastjl=fastjl.__version__,
        python=platform.python_version(),
        backends={k: str(v) for k, v in fastjl.backends(device).items()},
    )
    print(f"fastjl.bench on {info['device']} (torch {info['torch']}, {info['date']})")
    return info


def main_linear(args) -> int:
    device, dtype = resolve_device(args)
    names = contender_names(args, LINEAR_CONTENDERS)
    if names is None:
        return 2
    if args.preset and args.preset not in LINEAR_PRESETS:
        print(f"--op linear presets are {list(LINEAR_PRESETS)}, got {args.preset!r}", file=sys.stderr)
        return 2
    shapes = linear_shapes(args, device, dtype)
    rtol = args.rtol if args.rtol is not None else default_rtol(dtype, device)
    info = run_info(device)
    rows = []
    try:
        for s in shapes:
            rows += run_linear_shape(s, device, names, args.reps, args.input_sets, rtol)
    except Disagreement as exc:
        print(format_linear_table(rows))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_linear_table(rows))
    if args.save:
        path = save_json(args.save, f"bench-linear-{device}", dict(info, op="linear", rtol=rtol, results=rows))
        title = f"fastjl.bench --op linear on {info['device']}, {info['date']}"
        png = save_plot(rows, path.with_suffix(".png"), title, **LINEAR_PLOT)
        if png:
            print(f"wrote {png}")
    return 0


def device_error(args) -> str | None:
    """The one-line error for a ``--device`` torch cannot use (None for auto and usable ones)."""
    return None if args.device == "auto" else device_option_error("fastjl.bench", args.device)


def main(argv=None) -> int:
    args = parse_args(argv)
    error = device_error(args)
    if error:
        print(error, file=sys.stderr)
        return 2
    if args.contention < 0 or (args.contention and args.op == "linear"):
        print("--contention takes a number of busy processes >= 0, with --op project", file=sys.stderr)
        return 2
    if args.op == "linear":
        return main_linear(args)
    if args.preset and args.preset not in PRESETS:
        print(f"--op project presets are {list(PRESETS)}, got {args.preset!r}", file=sys.stderr)
        return 2
    device, shapes = resolve(args)
    names = contender_names(args, CONTENDERS)
    if names is None:
        return 2
    info = run_info(device)
    if args.peak_memory:
        for s in shapes:
            mib = peak_memory_mib(s, device)
            print(
                f"peak memory of fastjl-torch at B={s.batch} D={s.dim} K={s.proj_dim} {s.kind}: {mib:.1f} MiB "
                f"(a dense P would be {s.dim * s.proj_dim * 4 / 2**20:.0f} MiB)"
            )
        return 0
    ceilings = None if args.no_ceilings else measure_ceilings(device, shapes[0].dtype)
    if ceilings:
        print(
            f"ceilings: matmul {ceilings['matmul_tflops'] * 1e3:.0f} GFLOP/s ({ceilings['matmul_dtype']}), "
            f"bandwidth {ceilings['bandwidth_gbps']:.1f} GB/s"
        )
    rows = []
    for s in shapes:
        rows += run_shape(s, device, names, args.reps, args.input_sets, ceilings, args.contention)
    if args.contention:
        print(f"ms busy: the same timing with {args.contention} busy process(es) competing for the cores")
    print(format_table(rows))
    if args.save:
        path = save_json(args.save, f"bench-{device}", dict(info, ceilings=ceilings, results=rows))
        png = save_plot(rows, path.with_suffix(".png"), f"fastjl.bench on {info['device']}, {info['date']}")
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

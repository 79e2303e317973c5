"""``python -m fastjl.bench``: projection backends side by side on fresh random inputs.

Default on CPU: B=32, D=10^6, K=1024, fastjl's torch backend against a dense matmul with a
materialized torch-RNG matrix, timed without ("dense-stored") and with ("dense-generated",
TRAK's BasicProjector approach) generating that matrix.  On a GPU: DESIGN §8's TRAK
shapes.  Prints a table; ``--save`` also writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import sys
from pathlib import Path

import torch

import fastjl

from .ceilings import measure_ceilings
from .contenders import CONTENDERS, Shape, Unavailable
from .plot import save_plot
from .timing import median_ms

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRESETS = {  # (batches, dims, proj_dims)
    "cpu": ([32], [10**6], [1024]),
    "quick": ([8], [10**5], [512]),
    "trak": ([8, 32, 128, 512], [11_000_000, 110_000_000, 1_000_000_000], [512, 2048, 8192]),
}


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastjl.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (GPU when present)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="shape set (default: cpu on CPU, trak on GPU)")
    p.add_argument("--batch", type=_ints, help="comma-separated batch sizes B (overrides the preset)")
    p.add_argument("--dim", type=_ints, help="comma-separated input dims D, e.g. 1e6")
    p.add_argument("--proj-dim", type=_ints, help="comma-separated output dims K")
    p.add_argument("--kind", default="rademacher", choices=fastjl.KINDS)
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: float32 on CPU, bfloat16 on GPU")
    p.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated subset of: " + ", ".join(CONTENDERS)
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--input-sets", type=int, default=2, help="distinct random inputs cycled through")
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring the matmul/bandwidth ceilings")
    p.add_argument("--peak-memory", action="store_true", help="run fastjl-torch once per shape and report peak memory")
    p.add_argument("--save", nargs="?", const="bench/results", help="write JSON into this folder")
    return p.parse_args(argv)


def resolve(args):
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    preset = PRESETS[args.preset or ("trak" if device == "cuda" else "cpu")]
    batches, dims, proj_dims = args.batch or preset[0], args.dim or preset[1], args.proj_dim or preset[2]
    dtype = DTYPES[args.dtype or ("bfloat16" if device == "cuda" else "float32")]
    shapes = [Shape(b, d, k, args.kind, dtype) for d in dims for k in proj_dims for b in batches]
    return device, shapes


def run_shape(shape: Shape, device: str, names, reps: int, input_sets: int, ceilings):
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
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fastjl.project(x, shape.proj_dim, kind=shape.kind, out=out, backend="torch")
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # ru_maxrss is a high-water mark in KiB; x was allocated (and touched) above.
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fastjl.project(x, shape.proj_dim, kind=shape.kind, out=out, backend="torch")
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def format_table(rows) -> str:
    head = f"{'contender':16s} {'B':>5s} {'D':>11s} {'K':>6s} {'ms':>10s} {'GFLOP/s':>10s} {'GB/s':>8s} {'%mm':>5s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']:5d} {r['dim']:11d} {r['proj_dim']:6d}"
        if r["ms"] is None:
            lines.append(f"{r['contender']:16s} {shape}  unavailable: {r['note']}")
            continue
        frac = f"{100 * r['frac_matmul']:5.1f}" if "frac_matmul" in r else "    -"
        lines.append(f"{r['contender']:16s} {shape} {r['ms']:10.2f} {1e3 * r['tflops']:10.1f} {r['gbps']:8.2f} {frac}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device, shapes = resolve(args)
    names = [n.strip() for n in args.contenders.split(",")]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        print(f"unknown contenders {unknown}; valid: {list(CONTENDERS)}", file=sys.stderr)
        return 2
    info = dict(
        device=device_name(device),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__,
        fastjl=fastjl.__version__,
        python=platform.python_version(),
        backends={k: str(v) for k, v in fastjl.backends(device).items()},
    )
    print(f"fastjl.bench on {info['device']} (torch {info['torch']}, {info['date']})")
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
        rows += run_shape(s, device, names, args.reps, args.input_sets, ceilings)
    print(format_table(rows))
    if args.save:
        folder = Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = folder / f"bench-{device}-{stamp}.json"
        path.write_text(json.dumps(dict(info, ceilings=ceilings, results=rows), indent=2))
        print(f"wrote {path}")
        png = save_plot(rows, path.with_suffix(".png"), f"fastjl.bench on {info['device']}, {info['date']}")
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Relative error of the GPU backends against float64, as D grows (a GPU measurement).

For each backend (cuda, triton), kind and input dtype: ||y - ref|| / ||ref|| at D = 10^3,
10^6 and 10^8, where ref is the torch backend in float64 on the same (rounded) input.  A
sum chained through the tensor cores' accumulator over the whole D range drifts with D
(their alignment truncates); the kernels' gaussian paths promote each slice's partial sum
into a float32 add instead, so their error should stay near the entry precision.

Usage: python3 bench/gpu_precision.py [--dims 1e3,1e6,1e8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import fastjl

SHAPES = {10**3: (33, 4097), 10**6: (8, 256), 10**8: (2, 16)}  # D -> (B, K)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="1e3,1e6,1e8")
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--json")
    args = ap.parse_args()
    dims = [int(float(v)) for v in args.dims.split(",")]
    status = fastjl.backends("cuda")
    rows = []
    print(f"{'backend':7s} {'kind':10s} {'dtype':9s} {'B':>3s} {'D':>10s} {'K':>5s} {'rel err':>9s}")
    for dim in dims:
        batch, proj_dim = SHAPES.get(dim, (4, 64))
        gen = torch.Generator(device="cuda").manual_seed(dim)
        base = torch.randn(batch, dim, device="cuda", generator=gen)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = base.to(dtype)
            for kind in fastjl.KINDS:
                ref = fastjl.project(x.double(), proj_dim, seed=7, kind=kind, offset=2**40, backend="torch")
                for name in args.backends.split(","):
                    row = dict(backend=name, kind=kind, dtype=str(dtype)[6:], B=batch, D=dim, K=proj_dim)
                    if not status[name].available:
                        row["error"] = status[name].reason
                    else:
                        try:
                            out = torch.full((batch, proj_dim), float("nan"), device="cuda")
                            y = fastjl.project(x, proj_dim, seed=7, kind=kind, offset=2**40, out=out, backend=name)
                            row["rel_err"] = rel_err(y, ref)
                        except Exception as exc:  # noqa: BLE001 - report and go on
                            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    rows.append(row)
                    shown = f"{row['rel_err']:9.2e}" if "rel_err" in row else row["error"]
                    line = f"{name:7s} {kind:10s} {row['dtype']:9s} {batch:3d} {dim:10d} {proj_dim:5d} {shown}"
                    print(line, flush=True)
        del base, x
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

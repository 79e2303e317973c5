"""One ``fastjl.project`` call to profile with Nsight Compute (``bench/gpu_check.sh``'s ncu stages).

    ncu --kernel-name regex:sparse_project --launch-skip 1 --launch-count 1 --section ... \\
        python3 bench/ncu_target.py --kind sjlt --sparsity 4 --dtype bfloat16 --backend cuda

The call runs twice on the same inputs: the first compiles (Triton) and builds the cached
structure (sparse kinds), the second is the one to profile (``--launch-skip 1`` skips the
first launch of the named kernel).  Prints the shape and each call's wall time.
"""

from __future__ import annotations

import argparse
import time

import torch

import fastjl


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="sjlt")
    p.add_argument("--backend", default="cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=10_000_000)
    p.add_argument("--proj-dim", type=int, default=4096)
    p.add_argument("--sparsity", type=int, default=1)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("ncu_target.py profiles a GPU kernel: no CUDA device here")
    x = torch.randn(args.batch, args.dim, device="cuda").to(getattr(torch, args.dtype))
    opts = dict(kind=args.kind, backend=args.backend, seed=0)
    if args.kind in ("sjlt", "grass"):
        opts["sparsity"] = args.sparsity
    print(f"{args.backend} {args.kind} {args.dtype} B={args.batch} D={args.dim} K={args.proj_dim} {opts}")
    for call in ("warm-up", "profiled"):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fastjl.project(x, args.proj_dim, **opts)
        torch.cuda.synchronize()
        print(f"{call}: {(time.perf_counter() - start) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

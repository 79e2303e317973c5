"""Main-loop instruction counts of fastjl's Triton kernels, compiled for a real GPU without one:
the static measure beside ``bench/cuda_resources.py``'s for the CUDA kernels (issue 12).

    python bench/triton_loop_stats.py                    # dense project configs, sm_90
    python bench/triton_loop_stats.py --cc 80 --match rademacher-bfloat16

Each configuration (``fastjl._backends.triton_aot.configs()``) is compiled with
``triton.compile`` for ``sm_<cc>``; its cubin is read with the same SASS parser as the CUDA
kernels' (``fastjl._backends.cuda_resources``: the innermost backward branch holding the most
tensor-core instructions is the main loop), so the ``/MMA`` columns (instructions per warp per
m16n8k16-equivalent MMA, 2048 multiply-adds) of the two scripts compare directly.

The dense project kernel is compiled as the JIT specializes it for contiguous, aligned x at the
headline shapes (unit stride along D a constant, 16-divisible pointers and sizes: cp.async
vector loads), the counterpart of ``bench/cuda_loop_probe.py``'s cp.async-only CUDA kernels;
``--generic`` compiles it for any strides (element loads; what the compile tests check).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile

from fastjl._backends import cuda_resources, triton_aot


def loop_stats(cubin: bytes, cuobjdump: str) -> cuda_resources.LoopStats | None:
    """The main loop of the one kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    loops = list(cuda_resources.main_loop_stats(sass).values())
    return loops[0] if loops else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cc", type=int, default=90)
    p.add_argument("--match", default="project-", help="substring of the configuration names to compile")
    p.add_argument(
        "--generic",
        action="store_true",
        help="the dense project kernel for any strides (default: as specialized for contiguous x)",
    )
    args = p.parse_args(argv)
    import triton

    cuobjdump = cuda_resources.find_cuobjdump()
    if cuobjdump is None:
        raise SystemExit("no cuobjdump found (CUDA toolkit, $CUOBJDUMP, or Triton's bundled copy)")
    print(f"triton {triton.__version__}, sm_{args.cc}: main loop per warp per step")
    print(f"{'configuration':44s} {'loop':>5s} {'MMA':>4s} {'m16n8k16-eq':>11s} {'/MMA':>6s} {'LDGSTS':>6s}")
    for cfg in triton_aot.configs():
        if args.match not in cfg.name:
            continue
        kernel = triton_aot.compile_kernel(cfg, args.cc, contiguous=not args.generic)
        loop = loop_stats(kernel.asm["cubin"], cuobjdump)
        if loop is None:
            print(f"{cfg.name:44s} no loop with tensor-core instructions")
            continue
        print(
            f"{cfg.name:44s} {loop.instructions:5d} {loop.mma:4d} {loop.mma_equiv:11.1f} {loop.per_mma:6.1f}"
            f" {loop.ldgsts:6d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

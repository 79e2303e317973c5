"""Registers, stack, shared memory and local-memory instructions of every kernel in fastjl._C.

Reads the cubins embedded in the built module with cuobjdump (no GPU needed) and prints one
row per kernel instantiation and architecture:

    function  arch  regs  stack  local  smem  STL  LDL

regs: registers per thread; stack: stack frame bytes per thread (register spills and local
arrays); smem: static shared memory (the kernels' dynamic shared memory is not counted);
STL / LDL: local store / load instructions in the SASS (spill traffic, or a local array's).
The loop columns are the main loop's static counts (fastjl/_backends/cuda_resources.py); MMA
reads "n=e" where n tensor-core instructions are worth e m16n8k16 MMAs (a warp's share of an
HGMMA.64xNx16 is N/8), so /MMA compares the sm_90a (wgmma) kernel's rows with mma.sync's.
Run it before and after a kernel change and diff the two outputs.  The budget CI enforces
(<= 128 registers per project_kernel, no spills beyond an allowance table) is in
tests/test_cuda_compile.py.

Usage: python bench/cuda_resources.py [path/to/_C*.so] [--arch sm_80 --arch sm_90]
(default: fastjl/_C*.so of this checkout, every embedded architecture).  cuobjdump is looked
up as $CUOBJDUMP, on PATH, in the CUDA toolkit, then in Triton's NVIDIA backend.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_cuda_resources():
    """fastjl/_backends/cuda_resources.py by path: no fastjl (hence no torch) import."""
    name = "fastjl_cuda_resources"
    if name in sys.modules:  # loaded already (bench/cuda_loop_probe.py calls this per kernel)
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "fastjl" / "_backends" / "cuda_resources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the file executes
    spec.loader.exec_module(module)
    return module


def compiled_code_args(description: str, argv: list[str] | None, what: str = "the compiled module"):
    """The command line of the scripts that read compiled code: (args, module or cubin path,
    cuobjdump); ``path`` defaults to fastjl/_C*.so of this checkout.  Exits with a message when
    either is missing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("so", nargs="?", type=Path, help=f"{what} (default: fastjl/_C*.so)")
    parser.add_argument("--arch", action="append", help="sm_XX to show (repeatable; default: all embedded)")
    args = parser.parse_args(argv)
    so = args.so
    if so is None:
        found = sorted((ROOT / "fastjl").glob("_C*.so"))
        if not found:
            parser.error("fastjl/_C*.so is not built here (pip install -e .); pass the module's path")
        so = found[0]
    if not so.is_file():
        parser.error(f"{so}: no such file")
    tool = _load_cuda_resources().find_cuobjdump()
    if tool is None:
        parser.error("cuobjdump not found: set $CUOBJDUMP or put the CUDA toolkit's bin on PATH")
    return args, so, tool


def main(argv: list[str] | None = None) -> int:
    cr = _load_cuda_resources()
    args, so, tool = compiled_code_args(__doc__.splitlines()[0], argv)

    report = cr.collect(so, archs=args.arch, cuobjdump=tool)
    cubins = ", ".join(f"{a}: {report.cubins[a]}" for a in report.archs())
    print(f"{so}  (cubins per arch: {cubins}; {tool})")
    missing = [a for a in args.arch or [] if a not in report.cubins]
    if missing:
        print(f"not embedded: {', '.join(missing)}")
    if not report.kernels:
        print("no kernels")
        return 1
    print(cr.format_table(report.kernels))
    return 0


if __name__ == "__main__":
    sys.exit(main())

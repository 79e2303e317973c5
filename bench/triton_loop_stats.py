"""Main-loop instruction counts of fastjl's Triton kernels, compiled for a real GPU without one:
the static measure beside ``bench/cuda_resources.py``'s for the CUDA kernels (issue 12).

    python bench/triton_loop_stats.py                    # dense project configs, sm_90
    python bench/triton_loop_stats.py --cc 80 --match rademacher-bfloat16

For each configuration (``fastjl._backends.triton_aot.configs()``) it compiles the kernel with
``triton.compile`` for ``sm_<cc>``, disassembles the cubin (Triton's bundled ``nvdisasm``), takes
the backward branch whose body holds the most tensor-core instructions as the main loop, and
prints the loop's instructions per warp per step, its MMAs (``HMMA`` m16n8k16 or ``HGMMA``
m64nNk16 per warpgroup) and the instructions per m16n8k16-equivalent (2048 multiply-adds):
the column ``/MMA`` of ``cuda_resources.py``, so the two backends compare directly.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

M16N8K16_MACS = 16 * 8 * 16
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*?`?\(?(\.L_x_\d+)\)?")
_HGMMA = re.compile(r"HGMMA\.64x(\d+)x(\d+)")  # m64 nN kK, e.g. 64x128x16 (16-bit), 64x128x8 (tf32)
_HMMA = re.compile(r"HMMA\.(\d\d)(\d)(\d+)")  # m n k: 16816 (16-bit), 1688 (tf32)


def disassemble(cubin: bytes) -> list[str]:
    """nvdisasm's listing of ``cubin`` (one string per line)."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        listing = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True)
        return listing.stdout.splitlines()
    finally:
        os.unlink(f.name)


def main_loop(lines: list[str]) -> list[str]:
    """The instructions of the backward-branch loop with the most tensor-core instructions."""
    labels, instructions = {}, []
    for line in lines:
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
        match = _LINE.search(line)
        if match:
            instructions.append(match.group(2).strip())
    best: list[str] = []
    for end, text in enumerate(instructions):
        branch = _BRANCH.search(text)
        if branch and labels.get(branch.group(1), end + 1) <= end:
            body = instructions[labels[branch.group(1)] : end + 1]
            if mma_count(body) > mma_count(best):
                best = body
    return best


def mma_count(body: list[str]) -> int:
    return sum(("HMMA" in t) or ("HGMMA" in t) for t in body)


def m16n8k16_equivalents_per_warp(body: list[str]) -> float:
    """m16n8k16 equivalents (2048 MACs) per warp per step: an HMMA mMnNkK counts M·N·K / 2048
    (16816: 1, tf32's 1688: 1/2); an HGMMA m64nNkK is issued by each of a warpgroup's 4 warps
    for 64·N·K MACs of the group."""
    total = 0.0
    for text in body:
        hgmma, hmma = _HGMMA.search(text), _HMMA.search(text)
        if hgmma:
            total += 64 * int(hgmma.group(1)) * int(hgmma.group(2)) / M16N8K16_MACS / 4
        elif hmma:
            total += int(hmma.group(1)) * int(hmma.group(2)) * int(hmma.group(3)) / M16N8K16_MACS
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cc", type=int, default=90)
    p.add_argument("--match", default="project-", help="substring of the configuration names to compile")
    args = p.parse_args(argv)
    import triton
    from triton.backends.compiler import GPUTarget

    from fastjl._backends import triton_aot

    print(f"triton {triton.__version__}, sm_{args.cc}: main loop per warp per step")
    print(f"{'configuration':44s} {'loop':>5s} {'MMA':>4s} {'m16n8k16-eq':>11s} {'/MMA':>6s}")
    for cfg in triton_aot.configs():
        if args.match not in cfg.name:
            continue
        src, opts = triton_aot._source(cfg)
        kernel = triton.compile(src, target=GPUTarget("cuda", args.cc, 32), options=opts)
        body = main_loop(disassemble(kernel.asm["cubin"]))
        equivalents = m16n8k16_equivalents_per_warp(body)
        per = f"{len(body) / equivalents:6.1f}" if equivalents else "     -"
        print(f"{cfg.name:44s} {len(body):5d} {mma_count(body):4d} {equivalents:11.1f} {per}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

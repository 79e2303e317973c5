"""Instructions one warp issues per CTA step of the CUDA projection kernels' main loop, for
contiguous aligned x (the cp.async path), estimated from the compiled code without a GPU.

    python bench/cuda_loop_probe.py                 # mma.sync (sm_90) and wgmma (sm_90a)
    python bench/cuda_loop_probe.py --arch sm_80 --match B128

``bench/cuda_resources.py`` reads the main loop of the kernels in ``fastjl._C``; their loop
also holds the element-load path that contiguous x never takes, and the static count charges
it as if taken.  This script compiles ``bench/cuda_loop_probe.cu`` (the same kernels with the
cp.async path only) with nvcc to a cubin, so the loop is what a step runs, and amortizes the
two blocks a step runs only sometimes: the rademacher words (Philox), which each warp
computes once every 8 steps (found as the smallest forward branch around the Philox
multiplier's instructions), counted 1/8; and the rademacher kernels' fetch with the clamp to
the range, which only a split's last step runs (the smallest forward branch around the
zero-filling ``LDGSTS``; every other step takes the whole-step fetch), counted 0.  Columns:

    loop    static instructions of the main loop
    unrl    CTA steps per loop iteration (its barriers: the rademacher loops are unrolled,
            csrc/cta_steps.cuh step_unroll)
    inner   loops left inside it (not unrolled: their bodies run more than once per step)
    words   instructions of the words branch (0: gaussian, no words)
    tail    instructions of a step's clamped fetch (0: gaussian, one fetch for every step)
    step    (loop - words blocks - tails) / unrl + words/8: instructions per warp per
            (whole) step; rolled, loop - 7/8 words - tail
    slowest the slowest warp's mean per step: every step ends at a barrier, so it sets the
            pace.  With the words batched over kWordsBatch warps (csrc/words_pipeline.h), the
            warps that compute words in a step run ``words`` more than the others, once
            every kWordsBatch steps: step - words/8 + words/kWordsBatch
    MMA-eq  m16n8k16-equivalent MMAs per warp per step (2048 multiply-adds each)
    /MMA    step / MMA-eq

On an H100 (4 issue slots per SM per clock, ~1024 dense bf16 multiply-adds per SM per clock
per 2 CTAs' worth of warps) a step of the B128 configuration has ~64 issue slots per warp at
the tensor cores' peak rate; ``step`` above that is the issue-bound fraction.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHILOX_MULTIPLIER = "0xd2511f53"  # csrc/philox.cuh kPhiloxM0: only Philox rounds use it
WARPS = 8  # per CTA (csrc/project_plan.cuh kWarps)


def words_batch(source: Path = ROOT / "csrc" / "words_pipeline.h") -> int:
    """The kernels' kWordsBatch, read from its one definition."""
    found = re.search(r"constexpr int kWordsBatch = (\d+);", source.read_text())
    if found is None:
        raise RuntimeError(f"no `constexpr int kWordsBatch = N;` in {source}")
    return int(found.group(1))


def slowest_warp_step(step: float, words: int, batch: int) -> float:
    """The slowest warp's mean instructions per step, from the mean warp's (which counts the
    words block 1/8) and the words schedule's batch."""
    return step - words / WARPS + words / batch


def _load_cuda_resources():
    """fastjl/_backends/cuda_resources.py without importing fastjl (bench/cuda_resources.py's loader)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from cuda_resources import _load_cuda_resources as load
    finally:
        sys.path.pop(0)
    return load()


def find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def words_block(insts, first: int, last: int) -> int:
    """Instructions inside the smallest forward branch of the loop [first, last] that skips
    every Philox round (0 when the loop has none): the words code, which a warp runs in one
    step of 8."""
    philox = [i for i in range(first, last + 1) if PHILOX_MULTIPLIER in insts[i][2].lower()]
    if not philox:
        return 0
    best = smallest_branch_around(insts, first, last, philox)
    if best is None:
        raise RuntimeError("no forward branch around the Philox rounds: the probe's words rule no longer fits")
    return best


def smallest_branch_around(insts, first: int, last: int, marked: list[int]) -> int | None:
    """Instructions inside the smallest forward branch of the loop [first, last] that skips
    every instruction of `marked` (indices), or None when no branch does."""
    cr = _load_cuda_resources()
    best = None
    for i, target in cr.branches(insts):
        if first <= i < marked[0] and marked[-1] < target <= last + 1:
            size = target - i - 1
            best = size if best is None else min(best, size)
    return best


def tail_block(insts, first: int, last: int) -> int:
    """Instructions inside the smallest forward branch of the loop [first, last] that skips
    every zero-filling cp.async (0 when the loop has none): the fetch with the clamp to the
    split's range, which only a split's last step runs (csrc/project_tiles.cuh,
    load_x_tile_rows).  Only meaningful for kernels with a whole-step fetch (rademacher):
    the gaussian kernels' one fetch zero-fills on every step."""
    zfill = [i for i in range(first, last + 1) if insts[i][1] == "LDGSTS" and ".ZFILL" in insts[i][2]]
    if not zfill:
        return 0
    best = smallest_branch_around(insts, first, last, zfill)
    if best is None:
        raise RuntimeError("no forward branch around the zero-filling copies: the probe's tail rule no longer fits")
    return best


def step_bodies(insts, first: int, last: int) -> list[tuple[int, int]]:
    """The loop [first, last] cut at its barriers (``BAR.SYNC``: one per CTA step, at the top
    of the step): one (start, end) span per step body.  A loop unrolled u times has u bodies;
    the instructions before the first barrier (the step's x wait) belong to the first."""
    bars = [i for i in range(first, last + 1) if insts[i][1] == "BAR" and ".SYNC" in insts[i][2]]
    if not bars:
        return [(first, last)]
    starts = [first] + bars[1:]
    return list(zip(starts, [b - 1 for b in bars[1:]] + [last]))


def blocks_per_body(insts, first: int, last: int, finder) -> list[int]:
    """finder (words_block or tail_block) applied to each step body of the loop: the sizes of
    the blocks found (bodies without one left out)."""
    return [size for a, b in step_bodies(insts, first, last) if (size := finder(insts, a, b))]


def compile_probe(arch: str, nvcc: str, workdir: Path) -> Path:
    """bench/cuda_loop_probe.cu -> a cubin for arch (sm_90a: the wgmma kernel)."""
    wgmma = arch == "sm_90a"
    code = arch.replace("sm_", "")
    out = workdir / f"probe_{arch}.cubin"
    cmd = [
        nvcc,
        "-std=c++17",
        "-O3",
        "-DNDEBUG",
        f"-I{ROOT / 'csrc'}",
        "-cubin",
        f"-gencode=arch=compute_{code},code={arch}",
        "-o",
        str(out),
        str(ROOT / "bench" / "cuda_loop_probe.cu"),
    ]
    if wgmma:
        cmd.insert(1, "-DPROBE_SM90A")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {arch}:\n{proc.stderr[-4000:]}")
    return out


def probe_rows(cubin: Path, cuobjdump: str) -> list[dict]:
    cr = _load_cuda_resources()
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run(
        [cuobjdump, "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    # A lone cubin's listing has no "arch =" header line: one is supplied.
    resources = {name: fields for _, name, fields in cr.parse_resource_usage("arch = sm_00\n" + usage)}
    functions = cr.parse_sass(sass)
    names = cr.demangle(list(functions))
    rows = []
    batch = words_batch()
    for mangled, insts in functions.items():
        found = cr.main_loop_and_span(insts)
        if found is None:
            continue
        stats, (first, last) = found
        name = cr.short_name(names[mangled])
        # Kind: only rademacher has the words branch and a whole-step fetch.
        rademacher = name.endswith(", 0>")
        unroll = len(step_bodies(insts, first, last))  # steps per loop iteration
        words_blocks = blocks_per_body(insts, first, last, words_block) if rademacher else []
        tails = blocks_per_body(insts, first, last, tail_block) if rademacher else []
        words = sum(words_blocks) / len(words_blocks) if words_blocks else 0
        # A warp computes words once every 8 steps, whichever body holds the block (unrolled,
        # only the body whose step can be a multiple of 8 has one): words / 8 a step.
        step = (stats.instructions - sum(words_blocks) - sum(tails)) / unroll + words / 8
        slowest = slowest_warp_step(step, words, batch)
        equiv = (stats.mma_equiv or stats.mma) / unroll
        # The x wait's allowance (cp.async.wait_group N: N newer fetches may be in flight):
        # 0 with a double buffer, kXStages - 2 with more (x_pipeline.h).
        waits = [
            int(m.group(1), 16)
            for i in range(first, last + 1)
            if insts[i][1] == "DEPBAR" and (m := re.search(r"SB0, 0x([0-9a-f]+)", insts[i][2]))
        ]
        fields = resources.get(mangled, {})
        rows.append(
            dict(
                name=name,
                regs=fields.get("REG", -1),
                stack=fields.get("STACK", -1),
                loop=stats.instructions,
                inner=stats.inner_loops,
                unroll=unroll,
                x_wait=min(waits) if waits else -1,
                words=words,
                words_blocks=len(words_blocks),
                tail=sum(tails) / len(tails) if tails else 0,
                tails=len(tails),
                step=step,
                slowest=slowest,
                mma_eq=equiv,
                per_mma=step / equiv,
                local=stats.local,
            )
        )
    return sorted(rows, key=lambda r: r["name"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", action="append", help="sm_80, sm_90 (mma.sync) or sm_90a (wgmma); repeatable")
    p.add_argument("--match", default="", help="substring of the kernel names to show")
    args = p.parse_args(argv)
    cr = _load_cuda_resources()
    nvcc, cuobjdump = find_nvcc(), cr.find_cuobjdump()
    if nvcc is None or cuobjdump is None:
        raise SystemExit("needs nvcc ($CUDACXX or PATH) and cuobjdump ($CUOBJDUMP, the toolkit or Triton's copy)")
    archs = args.arch or ["sm_90", "sm_90a"]
    print(
        f"{'kernel (cp.async x only)':66s} {'arch':6s} {'regs':>4s} {'stack':>5s} {'lmem':>4s} "
        f"{'loop':>5s} {'unrl':>4s} {'inner':>5s} {'words':>5s} {'tail':>5s} {'step':>6s} {'slowest':>7s} "
        f"{'MMA-eq':>6s} {'/MMA':>6s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            for r in probe_rows(compile_probe(arch, nvcc, Path(tmp)), cuobjdump):
                if args.match not in r["name"]:
                    continue
                print(
                    f"{r['name'][:66]:66s} {arch:6s} {r['regs']:4d} {r['stack']:5d} {r['local']:4d} "
                    f"{r['loop']:5d} {r['unroll']:4d} {r['inner']:5d} {r['words']:5.0f} {r['tail']:5.0f} "
                    f"{r['step']:6.0f} {r['slowest']:7.0f} {r['mma_eq']:6.0f} {r['per_mma']:6.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

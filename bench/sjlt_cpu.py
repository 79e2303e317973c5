"""CPU timing of kind="sjlt" at the issue-13 shape against a plain ``index_add_`` and a copy.

    python bench/sjlt_cpu.py [D]     # default D = 10^7 (x is 32 x D float32: 1.28 GB)

Prints the median of 3 runs of: a copy of x (read + write bandwidth), ``index_add_`` with the
bucket indices and signs precomputed (what the sjlt package does), and ``fastjl.project(x, 4096,
kind="sjlt")`` generating them on the fly.
"""

import statistics
import sys
import time

import torch

import fastjl
from fastjl.sparse_blocks import sjlt_block

B, K = 32, 4096


def median_s(f, n=3):
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(x: torch.Tensor) -> float:
    """GB/s of ``dst.copy_(x)``, counting the bytes read and written (as fastjl.bench does)."""
    dst = torch.empty_like(x)
    return 2 * x.numel() * 4 / median_s(lambda: dst.copy_(x)) / 1e9


def main(dim: int) -> None:
    x = torch.randn(B, dim)
    copy_gbps = copy_bandwidth(x)
    columns, negative = sjlt_block(0, 0, dim, K, 1, "cpu")
    buckets, signs = columns[:, 0], 1 - 2 * negative[:, 0].float()

    def index_add():
        y = torch.zeros(B, K)
        return y.index_add_(1, buckets, x * signs)

    gb = x.numel() * 4 / 1e9
    t_index_add = median_s(index_add)
    t_fastjl = median_s(lambda: fastjl.project(x, K, kind="sjlt"))
    print(f"B={B} D={dim} K={K} s=1, {torch.get_num_threads()} threads; copy {copy_gbps:.2f} GB/s (read+write)")
    print(f"index_add_ (indices precomputed)  {t_index_add * 1e3:7.0f} ms  {gb / t_index_add:.2f} GB/s")
    share = gb / t_fastjl / copy_gbps
    rate = f"{gb / t_fastjl:.2f} GB/s = {share:.0%} of copy"
    print(f"fastjl sjlt (generated on the fly) {t_fastjl * 1e3:7.0f} ms  {rate}")
    y, ref = fastjl.project(x, K, kind="sjlt"), index_add()
    print(f"relative difference to index_add_: {((y - ref).norm() / ref.norm()).item():.1e}")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 10**7)

"""The two ceilings a projection is judged against, measured on this device in this run:
the dense matmul rate (tensor cores on GPU) and memory bandwidth (a device-to-device copy)."""

from __future__ import annotations

import torch

from .timing import median_ms


def measure_ceilings(device: str, dtype: torch.dtype, reps: int = 5) -> dict[str, float]:
    n = 8192 if device == "cuda" else 2048
    mm_dtype = dtype if device == "cuda" else torch.float32
    a = [torch.randn(n, n, device=device).to(mm_dtype) for _ in range(2)]
    ms = median_ms(lambda m: m @ m, a, device=device, reps=reps)
    tflops = 2 * n**3 / (ms * 1e-3) / 1e12
    numel = (1 << 28) if device == "cuda" else (1 << 26)  # 1 GiB / 256 MiB of float32
    src = [torch.randn(numel, device=device)]
    dst = torch.empty_like(src[0])
    ms = median_ms(lambda s: dst.copy_(s), src, device=device, reps=reps)
    gbps = 2 * numel * 4 / (ms * 1e-3) / 1e9  # read + write
    return {"matmul_tflops": tflops, "matmul_dtype": str(mm_dtype), "bandwidth_gbps": gbps}

"""bench/gpu_smoke.py, the GPU check's first contact and what compute-sanitizer runs, self-tested
through the CPU emulation: every dense and project_linear case passes (the sparse cases are
tested in tests/test_cuda_sparse.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_dense_cases_pass_under_emulation():
    script = [sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--emulate"]
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    project = [ln for ln in lines if ln.startswith("project ")]
    linear = [ln for ln in lines if ln.startswith("linear ")]
    # 2 kinds x 3 dtypes x 8 shapes; 2 kinds x 3 dtypes x 3 linear layers
    assert len(project) == 48 and len(linear) == 18, done.stdout
    assert all(ln.endswith(" PASS") for ln in project + linear), done.stdout
    assert any("B70-short" in ln for ln in project)  # fewer steps than the x pipeline's lead
    # 32 steps in one split: the rademacher words' 16 slots reused (words_pipeline.h)
    assert all("splits=1 " in ln for ln in project if "B130-long" in ln), done.stdout
    assert "wgmma: not run" in done.stdout and "0 failed" in done.stdout

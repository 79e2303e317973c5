"""``python -m fastjl.check``: it passes on a correct backend, reports the backends it cannot
run, and fails when a backend writes a wrong value, leaves an element unwritten or raises."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastjl import check
from fastjl._backends import torch_backend

from .helpers import compiling_env

pytest.importorskip("triton", reason="triton is not installed")  # the interpreter test needs it

ROOT = Path(__file__).resolve().parents[1]
QUICK_TORCH = ["--quick", "--device", "cpu", "--backends", "torch", "--seed", "7"]


def run_check(*args):
    """``python -m fastjl.check ARGS`` in a fresh process without TRITON_INTERPRET (which
    conftest.py sets for this one when there is no GPU)."""
    return subprocess.run(
        [sys.executable, "-m", "fastjl.check", *args],
        cwd=ROOT, env=compiling_env(ROOT), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_quick_cpu_run_passes_and_says_what_did_not_run():
    proc = run_check("--quick", "--device", "cpu", "--seed", "7")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "seed 7 (rerun with --seed 7); projection seed " in proc.stdout
    assert any(line.startswith("PASS torch   project ") for line in lines)
    assert any(line.startswith("PASS torch   project_linear ") for line in lines)
    assert not any(line.startswith("FAIL") for line in lines)
    assert any(line.startswith("NOT RUN cuda: ") for line in lines)
    assert any(line.startswith("NOT RUN triton: ") and "--triton-interpret" in line for line in lines)
    summary = next(line for line in lines if " passed, " in line)
    assert " 0 failed, backends not run: " in summary and "cuda (" in summary and "triton (" in summary


@pytest.mark.slow
def test_triton_interpreter_run_passes():
    """--triton-interpret sets TRITON_INTERPRET=1 before the kernels are imported; one dtype
    (--dtypes) keeps it to ~20 s (the kernels' dtypes are covered by tests/test_triton*.py)."""
    proc = run_check("--triton-interpret", "--quick", "--backends", "triton", "--dtypes", "bfloat16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("PASS triton  project ") for line in lines) >= 10
    assert sum(line.startswith("PASS triton  project_linear ") for line in lines) >= 8
    assert all(" bfloat16 " in line for line in lines if line.startswith(("PASS", "FAIL")))


def _broken(mode):
    """The torch backend's project, broken in one element of every float32 output."""
    original = torch_backend.project

    def project(x, out, **kw):
        original(x, out, **kw)
        if out.dtype == torch.float32:  # the float64 reference path stays correct
            if mode == "raise":
                raise RuntimeError("kernel exploded\nsecond line")
            out[-1, -1] = math.nan if mode == "unwritten" else out[-1, -1] + 1.0

    return project


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("unwritten", "output elements NaN/inf (unwritten or non-finite)"),
        ("wrong", "err="),
        ("raise", "error: RuntimeError: kernel exploded"),
    ],
)
def test_a_broken_backend_fails(monkeypatch, capsys, mode, expected):
    monkeypatch.setattr(torch_backend, "project", _broken(mode))
    assert check.main(QUICK_TORCH) == 1
    lines = capsys.readouterr().out.splitlines()
    project = [line for line in lines if line.startswith(("PASS torch   project ", "FAIL torch   project "))]
    project = [line for line in project if " sjlt " not in line and " grass " not in line]  # not torch_backend's
    assert len(project) == 30 and all(line.startswith("FAIL") and expected in line for line in project)
    # project_linear's cases ran after them (those that do not call the broken function pass)
    assert any(line.startswith("PASS torch   project_linear ") for line in lines)
    failed = sum(line.startswith("FAIL") for line in lines)
    summary = next(line for line in lines if " passed, " in line)
    assert f" {failed} failed, " in summary


@pytest.mark.parametrize(
    "argv",
    [["--backends", "torch,nope"], ["--seed", "-1"], ["--device", "tpu"], ["--quick", "--bogus"], ["--dtypes", "fp8"]],
)
def test_bad_arguments_exit_2(argv, capsys):
    assert check.main(argv) == 2
    assert "python -m fastjl.check" in capsys.readouterr().err


def test_every_case_has_a_bound():
    for table in check.SHAPES.values():
        for tier in table.values():
            for shape in tier:
                assert set(shape.layouts) <= set(check.LAYOUTS) and set(shape.kinds) <= set(check.KINDS)
    for backend in ("torch", "cuda", "triton", "triton-interpret"):
        for op in check.SHAPES:
            for kind in check.KINDS:
                for dtype in check.DTYPES:
                    assert 0 < check.bound(backend, op, kind, dtype, 1) < 1e-2

"""Asking for CUDA where torch has none gives a clear message, not torch's traceback.

On a CPU-only torch build ``torch.cuda.get_device_capability`` and every CUDA allocation
raise ``AssertionError: Torch not compiled with CUDA enabled`` from deep inside torch; the
backends table, ``python -m fastjl.bench`` and ``python -m trak_core.demo`` say what is
wrong and what to use instead (exit status 2 for the commands).
"""

import subprocess
import sys

import pytest
import torch

import fastjl
from fastjl.devices import device_option_error, device_problem
from trak_core.demo.run import DemoConfig, run_demo

no_cuda_only = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch has no usable CUDA")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def _assert_clear_error(proc: subprocess.CompletedProcess, prog: str, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: --device "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert proc.stdout == "", proc.stdout  # nothing ran


@no_cuda_only
def test_backends_table_for_cuda_says_cuda_is_missing():
    table = fastjl.backends("cuda")
    for name in ("cuda", "triton"):
        assert not table[name].available, table
        assert "CUDA" in table[name].reason, table
    assert table["torch"].available
    assert "CUDA" in repr(table)


@no_cuda_only
def test_device_problem_names_the_missing_cuda():
    assert device_problem("cpu") is None
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        problem = device_problem(device)
        assert problem is not None and "no usable CUDA device" in problem
    if torch.version.cuda is None:
        assert "CPU-only build" in device_problem("cuda")
    line = device_option_error("prog", "cuda")
    assert line.startswith("prog: --device cuda, but ") and line.endswith("; use --device cpu")


def test_unknown_and_unsupported_devices_are_explained():
    assert "not a device torch knows" in device_problem("tpu")
    assert device_option_error("prog", "cpu") is None
    assert "runs on cpu or cuda devices only" in device_option_error("prog", "meta")


@no_cuda_only
@pytest.mark.parametrize("extra", [[], ["--op", "linear"]], ids=["project", "linear"])
def test_bench_with_cuda_on_a_cpu_only_torch_exits_2_with_one_line(extra):
    proc = _run("fastjl.bench", "--device", "cuda", *extra)
    _assert_clear_error(proc, "fastjl.bench", "--device cuda", "no usable CUDA device", "use --device cpu")


def test_bench_with_an_unknown_device_exits_2_with_one_line():
    proc = _run("fastjl.bench", "--device", "tpu")
    _assert_clear_error(proc, "fastjl.bench", "--device tpu", "not a device torch knows", "use --device cpu")


@no_cuda_only
def test_demo_with_cuda_on_a_cpu_only_torch_exits_2_before_any_work(tmp_path):
    out_dir = tmp_path / "out"
    proc = _run("trak_core.demo", "--device", "cuda", "--out-dir", str(out_dir))
    _assert_clear_error(proc, "trak_core.demo", "--device cuda", "no usable CUDA device", "use --device cpu")
    assert not out_dir.exists()


@no_cuda_only
def test_run_demo_rejects_cuda_before_any_work(tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="no usable CUDA device"):
        run_demo(DemoConfig(device="cuda", out_dir=str(out_dir)))
    assert not out_dir.exists()

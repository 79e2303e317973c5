"""Backend selection: auto, FASTJL_BACKEND, and clear reasons for unavailable backends."""

import pytest
import torch

import fastjl
from fastjl import _backends


def test_backends_reports_every_backend_with_a_reason():
    status = fastjl.backends("cpu")
    assert set(status) == {"torch", "triton", "cuda"}
    assert status["torch"].available and status["torch"].reason == "ok"
    for s in status.values():
        assert s.available or len(s.reason) > 10
        assert s.name in str(s)


def test_auto_on_cpu_is_torch():
    assert _backends.select("auto", torch.device("cpu")).NAME == "torch"


def test_unavailable_backend_raises_with_the_same_reason():
    for name, s in fastjl.backends("cpu").items():
        if s.available:
            continue
        with pytest.raises(RuntimeError, match=name) as info:
            fastjl.project(torch.randn(2, 3), 4, backend=name)
        assert s.reason in str(info.value)


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("FASTJL_BACKEND", "torch")
    assert _backends.select("auto", torch.device("cpu")).NAME == "torch"
    monkeypatch.setenv("FASTJL_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTJL_BACKEND"):
        fastjl.project(torch.randn(2, 3), 4)
    # An explicit backend argument wins over the environment.
    assert fastjl.project(torch.randn(2, 3), 4, backend="torch").shape == (2, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_prefers_compiled_backends():
    status = fastjl.backends("cuda")
    for dtype, order in [(torch.float32, ("cuda", "triton")), (torch.bfloat16, ("triton", "cuda"))]:
        picked = _backends.select("auto", torch.device("cuda"), dtype=dtype).NAME
        assert picked == next(n for n in (*order, "torch") if status[n].available), dtype


def test_auto_order_by_dtype():
    """On CUDA tensors 16-bit inputs try Triton first (measured faster, same precision), float32
    the CUDA kernel (more precise than Triton's tf32); CPU tensors always get torch."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _backends.auto_order(cuda, torch.float16)[0] == "triton"
    assert _backends.auto_order(cuda, torch.bfloat16)[0] == "triton"
    assert _backends.auto_order(cuda, torch.float32)[0] == "cuda"
    assert _backends.auto_order(cuda)[0] == "cuda"
    assert _backends.auto_order(cpu, torch.float16) == ("torch",)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # sparse kinds: CUDA kernel first
        assert _backends.auto_order(cuda, dtype, "project_sparse") == ("cuda", "triton", "torch")
        assert _backends.auto_order(cpu, dtype, "project_sparse") == ("torch",)

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


def test_auto_order_by_dtype(monkeypatch):
    """On CUDA tensors 16-bit inputs try Triton first (measured faster, same precision), float32
    the CUDA kernel (more precise than Triton's tf32); CPU tensors always get torch."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _backends.auto_order(cuda, torch.float16)[0] == "triton"
    assert _backends.auto_order(cuda, torch.bfloat16)[0] == "triton"
    assert _backends.auto_order(cuda, torch.float32)[0] == "cuda"
    assert _backends.auto_order(cuda)[0] == "cuda"
    assert _backends.auto_order(cpu, torch.float16) == ("torch",)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # sparse kinds: CUDA kernel first
        assert _backends.auto_order(cuda, dtype, "project_sparse") == ("cuda", "triton", "torch")
        assert _backends.auto_order(cpu, dtype, "project_sparse") == ("torch",)


@pytest.mark.parametrize(
    "batch, kind, dtype, op, capability, first",
    [
        (65, "rademacher", torch.bfloat16, "project", (9, 0), "cuda"),  # measured: CUDA (wgmma) faster
        (4096, "rademacher", torch.float16, "project", (9, 0), "cuda"),
        (64, "rademacher", torch.bfloat16, "project", (9, 0), "triton"),  # B <= 64: Triton
        (4096, "gaussian", torch.bfloat16, "project", (9, 0), "triton"),  # gaussian: Triton
        (4096, "rademacher", torch.bfloat16, "project_linear", (9, 0), "triton"),
        (4096, "rademacher", torch.bfloat16, "project", (8, 0), "triton"),  # not measured elsewhere
        (None, "rademacher", torch.bfloat16, "project", (9, 0), "triton"),
        (4096, "rademacher", torch.float32, "project", (8, 0), "cuda"),  # float32: always CUDA
    ],
)
def test_auto_order_on_hopper_by_batch_and_kind(monkeypatch, batch, kind, dtype, op, capability, first):
    """Rademacher projections of 16-bit x with B > 64 on compute capability 9.0 try the CUDA kernel
    first (H100, run 7: its wgmma kernel 1.18-1.21x Triton's); everything else as before."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    order = _backends.auto_order(torch.device("cuda"), dtype, op, batch, kind)
    assert order[0] == first
    assert sorted(order) == ["cuda", "torch", "triton"] and order[-1] == "torch"


@pytest.mark.parametrize("capability", [(9, 0), (8, 0)])
@pytest.mark.parametrize("env", [None, "", "1", "0"])
def test_wgmma_routing_rule_on_a_mocked_gpu(monkeypatch, capability, env):
    """cuda_backend.use_wgmma without a GPU (capability and build mocked): only on compute
    capability 9.0 with the sm_90a kernel built; FASTJL_CUDA_WGMMA=1 from B = 64 for any kind and
    dtype, unset or empty where measured faster (rademacher, 16-bit x, B > 64), 0 never."""
    from types import SimpleNamespace

    from fastjl._backends import cuda_backend as cb

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    monkeypatch.setattr(cb, "_C", SimpleNamespace(project_sm90=None))
    if env is None:
        monkeypatch.delenv(cb.WGMMA_ENV, raising=False)
    else:
        monkeypatch.setenv(cb.WGMMA_ENV, env)
    cuda = torch.device("cuda", 0)
    for kind in ("rademacher", "gaussian"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for batch in (32, 64, 65, 512):
                fast = kind == "rademacher" and dtype != torch.float32 and batch > 64
                expected = capability == (9, 0) and (batch >= 64 if env == "1" else env in (None, "") and fast)
                assert cb.use_wgmma(batch, cuda, kind=kind, dtype=dtype) is expected, (kind, dtype, batch)
                assert cb.measured_faster(kind, dtype, batch, cuda) is (capability == (9, 0) and fast)
    monkeypatch.setattr(cb, "_C", SimpleNamespace())  # a build without the sm_90a kernel
    monkeypatch.setenv(cb.WGMMA_ENV, "1")
    assert cb.use_wgmma(512, cuda) is False

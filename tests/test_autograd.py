"""Autograd (issue 16, item 9): ``fastjl.project`` and ``fastjl.project_linear`` are
differentiable with the same backward pass on every backend (the transposed projection,
computed block by block with the torch backend's generator)."""

import pytest
import torch

import fastjl

# Triton runs on CPU tensors under the interpreter (tests/conftest.py sets TRITON_INTERPRET).
KINDS = ["rademacher", "gaussian"]


@pytest.fixture
def small_budget():
    """16 KiB: K = 300 spans 3 column blocks (of 128) and D is cut into blocks of a few rows."""
    previous = fastjl.set_block_budget(16 * 1024)
    yield
    fastjl.set_block_budget(previous)


def _triton_or_skip():
    status = fastjl.backends("cpu")["triton"]
    if not status.available:
        pytest.skip(status.reason)


def _dense_p(seed, kind, offset, dim, proj_dim):
    return fastjl.matrix_block(seed, kind, range(offset, offset + dim), range(proj_dim))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [None, "jl"])
def test_project_gradcheck_float64(kind, scale, small_budget):
    x = torch.randn(3, 37, dtype=torch.float64, requires_grad=True)

    def f(x):
        return fastjl.project(x, 300, seed=5, kind=kind, offset=11, backend="torch", scale=scale)

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)


@pytest.mark.parametrize("kind", KINDS)
def test_project_grad_is_dy_times_p_transposed(kind, small_budget):
    x = torch.randn(5, 301, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 259, dtype=torch.float64)
    fastjl.project(x, 259, seed=7, kind=kind, offset=1000, backend="torch").backward(dy)
    expected = dy @ _dense_p(7, kind, 1000, 301, 259).T
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_project_grad_same_on_triton_and_torch(kind, small_budget):
    _triton_or_skip()
    x = torch.randn(4, 67)
    dy = torch.randn(4, 300)
    grads = {}
    for backend in ("torch", "triton"):
        xb = x.clone().requires_grad_()
        y = fastjl.project(xb, 300, seed=3, kind=kind, offset=5, backend=backend, scale="jl")
        assert y.grad_fn is not None
        y.backward(dy)
        grads[backend] = xb.grad
    torch.testing.assert_close(grads["triton"], grads["torch"], rtol=0, atol=0)
    expected = (dy.double() @ _dense_p(3, kind, 5, 67, 300).T / 300**0.5).float()
    torch.testing.assert_close(grads["torch"], expected, rtol=1e-5, atol=1e-5)


def test_project_grad_in_input_dtype_and_other_details():
    x = torch.randn(3, 20, dtype=torch.float16, requires_grad=True)
    y = fastjl.project(x, 16, backend="torch")
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.float16
    # grad mode off: no graph
    with torch.no_grad():
        assert fastjl.project(x, 16).grad_fn is None
    assert fastjl.project(x.detach(), 16).grad_fn is None
    # an empty batch
    empty = torch.randn(0, 20, requires_grad=True)
    fastjl.project(empty, 16).sum().backward()
    assert empty.grad.shape == (0, 20)


def test_project_with_out_is_differentiable():
    x = torch.randn(3, 50, requires_grad=True)
    out = torch.empty(3, 16)
    result = fastjl.project(x, 16, out=out, seed=2)
    assert result is out and out.grad_fn is not None
    torch.testing.assert_close(out.detach(), fastjl.project(x.detach(), 16, seed=2), rtol=0, atol=0)
    out.pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    fastjl.project(x2, 16, seed=2).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_project_chunks_by_offset_sum_to_the_whole_and_so_do_grads(small_budget):
    x = torch.randn(2, 90, dtype=torch.float64, requires_grad=True)
    whole = fastjl.project(x, 140, seed=1, backend="torch")
    parts = fastjl.project(x[:, :40], 140, seed=1, backend="torch") + fastjl.project(
        x[:, 40:], 140, seed=1, offset=40, backend="torch"
    )
    dy = torch.randn(2, 140, dtype=torch.float64)
    (g1,) = torch.autograd.grad(whole, x, dy)
    (g2,) = torch.autograd.grad(parts, x, dy)
    torch.testing.assert_close(g1, g2)


# --- project_linear -------------------------------------------------------------------------


def _linear_inputs(tokens, d_in=5, d_out=7, batch=2, dtype=torch.float64):
    shape = (batch,) if tokens is None else (batch, tokens)
    a = torch.randn(*shape, d_in, dtype=dtype, requires_grad=True)
    g = torch.randn(*shape, d_out, dtype=dtype, requires_grad=True)
    return a, g


@pytest.mark.parametrize("kind", KINDS + ["kronecker"])
@pytest.mark.parametrize("tokens", [None, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_project_linear_gradcheck_float64(kind, tokens, bias, small_budget):
    a, g = _linear_inputs(tokens)
    proj_dim = 12 if kind == "kronecker" else 300

    def f(a, g):
        return fastjl.project_linear(
            a, g, proj_dim, seed=4, kind=kind, offset=9, bias=bias, backend="torch", scale="jl"
        )

    assert torch.autograd.gradcheck(f, (a, g), fast_mode=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [False, True])
def test_project_linear_grads_equal_project_of_the_formed_gradient(kind, bias, small_budget):
    """The grads of project_linear equal those of fastjl.project applied to the per-example
    gradient formed with torch ops (the reference)."""
    a, g = _linear_inputs(3, d_in=9, d_out=4)
    dy = torch.randn(2, 259, dtype=torch.float64)
    fastjl.project_linear(a, g, 259, seed=6, kind=kind, offset=13, bias=bias, backend="torch").backward(dy)
    a2, g2 = a.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()
    G = torch.einsum("bto,bti->boi", g2, a2).flatten(1)
    x = torch.cat([G, g2.sum(1)], 1) if bias else G
    fastjl.project(x, 259, seed=6, kind=kind, offset=13, backend="torch").backward(dy)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(g.grad, g2.grad)


@pytest.mark.parametrize("kind", KINDS)
def test_project_linear_grad_same_on_triton_and_torch(kind, small_budget):
    _triton_or_skip()
    a0, g0 = torch.randn(3, 2, 6), torch.randn(3, 2, 5)
    dy = torch.randn(3, 130)
    grads = {}
    for backend in ("torch", "triton"):
        a, g = a0.clone().requires_grad_(), g0.clone().requires_grad_()
        y = fastjl.project_linear(a, g, 130, seed=8, kind=kind, offset=3, bias=True, backend=backend)
        assert y.grad_fn is not None
        y.backward(dy)
        grads[backend] = (a.grad, g.grad)
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], rtol=0, atol=0)
    torch.testing.assert_close(grads["triton"][1], grads["torch"][1], rtol=0, atol=0)


def test_project_linear_only_one_input_requires_grad():
    a = torch.randn(2, 4)
    g = torch.randn(2, 3, requires_grad=True)
    fastjl.project_linear(a, g, 16, seed=1).sum().backward()
    assert a.grad is None and g.grad.shape == (2, 3)
    out = torch.empty(2, 16)
    assert fastjl.project_linear(a, g, 16, seed=1, out=out) is out and out.grad_fn is not None
    with torch.no_grad():
        assert fastjl.project_linear(a, g, 16).grad_fn is None


@pytest.mark.parametrize("kind", KINDS + ["kronecker"])
@pytest.mark.parametrize("tokens", [None, 2])
def test_project_linear_values_do_not_change_with_requires_grad(kind, tokens):
    a, g = _linear_inputs(tokens, dtype=torch.float32)
    plain = fastjl.project_linear(a.detach(), g.detach(), 12, seed=3, kind=kind, offset=5, bias=True, scale="jl")
    tracked = fastjl.project_linear(a, g, 12, seed=3, kind=kind, offset=5, bias=True, scale="jl")
    assert tracked.grad_fn is not None and plain.grad_fn is None
    torch.testing.assert_close(tracked.detach(), plain, rtol=1e-6, atol=1e-6)

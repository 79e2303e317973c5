"""Inputs that used to be accepted and give garbage (issue 16, items 8 and 10): overlapping or
expanded ``out``, an invalid ``FASTJL_TORCH_BLOCK_MB``, truncated integers, meta and sparse
tensors, and empty per-parameter batches."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastjl
from fastjl._backends import torch_backend

# Triton runs on CPU tensors under the interpreter (tests/conftest.py sets TRITON_INTERPRET).
BACKENDS = ["torch", "triton"]


def _triton_or_skip(backend):
    if backend == "triton" and not fastjl.backends("cpu")["triton"].available:
        pytest.skip(fastjl.backends("cpu")["triton"].reason)


@pytest.fixture
def small_budget():
    """A block budget that makes K = 300 span several column tiles in the torch backend."""
    previous = fastjl.set_block_budget(16 * 1024)
    yield
    fastjl.set_block_budget(previous)


# --- item 8: out overlapping the input, expanded out --------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_aliasing_x_is_refused(backend, small_budget):
    _triton_or_skip(backend)
    x = torch.randn(4, 300)
    with pytest.raises(ValueError, match="out shares memory with x"):
        fastjl.project(x, 300, out=x, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_partly_overlapping_x_is_refused(backend, small_budget):
    _triton_or_skip(backend)
    buf = torch.randn(4 * 300 + 7)
    x = buf[: 4 * 300].view(4, 300)
    out = buf[7:].view(4, 300)
    with pytest.raises(ValueError, match="overlap"):
        fastjl.project(x, 300, out=out, backend=backend)
    # a transposed view of the same memory is caught too (out's column 0 is x's row 0)
    sq = torch.randn(300, 300)
    with pytest.raises(ValueError, match="out shares memory with x"):
        fastjl.project(sq[:4], 300, out=sq.t()[:4], backend=backend)


def test_out_next_to_x_in_one_buffer_is_fine():
    buf = torch.randn(2 * 4 * 200)
    x = buf[: 4 * 200].view(4, 200)
    out = buf[4 * 200 :].view(4, 200)
    expected = fastjl.project(x.clone(), 200, backend="torch")
    assert fastjl.project(x, 200, out=out, backend="torch") is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_out_is_refused(backend):
    _triton_or_skip(backend)
    x = torch.randn(5, 40)
    out = torch.empty(1, 130).expand(5, 130)
    with pytest.raises(ValueError, match="stride 0"):
        fastjl.project(x, 130, out=out, backend=backend)
    col = torch.empty(5, 1).expand(5, 130)
    with pytest.raises(ValueError, match="stride 0"):
        fastjl.project(x, 130, out=col, backend=backend)


def test_stride_zero_in_a_size_one_dimension_is_fine():
    x = torch.randn(1, 40)
    out = torch.empty(130).as_strided((1, 130), (0, 1))
    fastjl.project(x, 130, out=out, backend="torch")
    torch.testing.assert_close(out, fastjl.project(x, 130, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["a", "g"])
def test_project_linear_out_overlapping_a_or_g_is_refused(backend, which):
    _triton_or_skip(backend)
    a, g = torch.randn(3, 130), torch.randn(3, 5)
    buf = a if which == "a" else torch.randn(3, 130)
    g = g if which == "a" else buf[:, :5]
    with pytest.raises(ValueError, match=f"out shares memory with {which}"):
        fastjl.project_linear(a, g, 130, out=buf, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_project_linear_expanded_out_is_refused(backend):
    _triton_or_skip(backend)
    a, g = torch.randn(3, 6), torch.randn(3, 5)
    with pytest.raises(ValueError, match="stride 0"):
        fastjl.project_linear(a, g, 130, out=torch.empty(1, 130).expand(3, 130), backend=backend)


def test_overlaps_helper():
    from fastjl.validation import overlaps

    t = torch.arange(20.0)
    assert overlaps(t[:10], t[9:])
    assert not overlaps(t[:10], t[10:])
    assert not overlaps(t[:10], t[:0])
    assert not overlaps(t, torch.arange(20.0))


# --- item 10: FASTJL_TORCH_BLOCK_MB ---------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "1e-9", "0.5", "abc", "nan", "inf", "", "1e30"])
def test_invalid_block_mb_names_the_variable(value, monkeypatch):
    monkeypatch.setenv("FASTJL_TORCH_BLOCK_MB", value)
    monkeypatch.setattr(torch_backend, "_budget_bytes", None)
    with pytest.raises(ValueError, match=r"FASTJL_TORCH_BLOCK_MB=" + repr(value).replace("+", r"\+")):
        fastjl.block_budget()
    with pytest.raises(ValueError, match="FASTJL_TORCH_BLOCK_MB"):
        fastjl.project(torch.randn(2, 10), 8, backend="torch")


@pytest.mark.parametrize("value, expected", [("1", 2**20), ("64", 64 * 2**20), ("2.5", int(2.5 * 2**20))])
def test_valid_block_mb(value, expected, monkeypatch):
    monkeypatch.setenv("FASTJL_TORCH_BLOCK_MB", value)
    monkeypatch.setattr(torch_backend, "_budget_bytes", None)
    assert fastjl.block_budget() == expected


def test_set_block_budget_overrides_an_invalid_variable(monkeypatch):
    monkeypatch.setenv("FASTJL_TORCH_BLOCK_MB", "abc")
    monkeypatch.setattr(torch_backend, "_budget_bytes", None)
    previous = fastjl.set_block_budget(1 << 20)
    try:
        assert previous is None
        assert fastjl.project(torch.randn(2, 10), 8, backend="torch").shape == (2, 8)
    finally:
        fastjl.set_block_budget(previous)
    with pytest.raises(ValueError, match="FASTJL_TORCH_BLOCK_MB"):
        fastjl.block_budget()


def test_import_with_invalid_block_mb_works_and_use_names_it():
    code = (
        "import torch, fastjl\n"
        "try:\n"
        "    fastjl.project(torch.ones(1, 3), 4, backend='torch')\n"
        "except ValueError as e:\n"
        "    print('ERR', e)\n"
    )
    env = dict(os.environ, FASTJL_TORCH_BLOCK_MB="abc")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ERR environment variable FASTJL_TORCH_BLOCK_MB='abc'" in done.stdout


# --- item 10: integers are integers -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(proj_dim=torch.tensor(8.7)),
        dict(proj_dim=torch.tensor(8.0)),
        dict(proj_dim=np.float64(8.0)),
        dict(proj_dim=8.0),
        dict(proj_dim=torch.tensor(True)),
        dict(proj_dim=np.bool_(True)),
        dict(proj_dim=torch.tensor([8])),
        dict(seed=torch.tensor(3.9)),
        dict(seed=3.0),
        dict(seed=True),
        dict(offset=torch.tensor(1.5)),
        dict(offset=np.float32(2.0)),
    ],
)
def test_non_integers_are_refused(kwargs):
    args = dict(proj_dim=8) | kwargs
    with pytest.raises(TypeError, match="must be an integer"):
        fastjl.project(torch.randn(2, 10), args.pop("proj_dim"), **args)


def test_non_integers_are_refused_by_project_linear_and_projector():
    a, g = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(TypeError, match="proj_dim must be an integer"):
        fastjl.project_linear(a, g, torch.tensor(8.7))
    with pytest.raises(TypeError, match="seed must be an integer"):
        fastjl.project_linear(a, g, 8, seed=torch.tensor(3.9))
    with pytest.raises(TypeError, match="grad_dim must be an integer"):
        fastjl.Projector(torch.tensor(12.5), 8)
    with pytest.raises(TypeError, match="model_id must be an integer"):
        fastjl.Projector(12, 8).seed_for(torch.tensor(1.5))


def test_true_integers_are_accepted():
    x = torch.randn(2, 10)
    expected = fastjl.project(x, 8, seed=3, offset=2)
    for k, s, o in [(np.int64(8), np.uint32(3), np.int16(2)), (torch.tensor(8), torch.tensor(3), torch.tensor(2))]:
        torch.testing.assert_close(fastjl.project(x, k, seed=s, offset=o), expected, rtol=0, atol=0)


def test_check_indices():
    from fastjl.validation import check_indices

    assert check_indices([0, 2, 5]).tolist() == [0, 2, 5]
    assert check_indices(torch.tensor([[1], [3]])).tolist() == [1, 3]
    assert check_indices(np.arange(3, dtype=np.uint8)).dtype == np.int64
    assert check_indices([]).tolist() == []
    with pytest.raises(TypeError, match="integer indices"):
        check_indices([0.5, 1.5])
    with pytest.raises(TypeError, match="integer indices"):
        check_indices(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="bools"):
        check_indices([True, False])
    with pytest.raises(TypeError, match="bools"):
        check_indices(torch.tensor([True, False]))


# --- item 10: meta and sparse tensors -------------------------------------------------------


def test_meta_tensors_are_refused():
    with pytest.raises(ValueError, match="x is a meta tensor"):
        fastjl.project(torch.empty(2, 10, device="meta"), 8)
    with pytest.raises(ValueError, match="a is a meta tensor"):
        fastjl.project_linear(torch.empty(2, 3, device="meta"), torch.empty(2, 4, device="meta"), 8)
    with pytest.raises(ValueError, match="g is a meta tensor"):
        fastjl.project_linear(torch.randn(2, 3), torch.empty(2, 4, device="meta"), 8)
    with pytest.raises(ValueError, match="out is a meta tensor"):
        fastjl.project(torch.randn(2, 10), 8, out=torch.empty(2, 8, device="meta"))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensors_are_refused():
    with pytest.raises(TypeError, match="x must be a dense"):
        fastjl.project(torch.randn(2, 10).to_sparse(), 8)
    with pytest.raises(TypeError, match="x must be a dense"):
        fastjl.project(torch.randn(2, 10).to_sparse_csr(), 8)
    with pytest.raises(TypeError, match="a must be a dense"):
        fastjl.project_linear(torch.randn(2, 3).to_sparse(), torch.randn(2, 4), 8)
    with pytest.raises(TypeError, match="g must be a dense"):
        fastjl.project_linear(torch.randn(2, 3), torch.randn(2, 4).to_sparse(), 8)
    with pytest.raises(TypeError, match="out must be a dense"):
        fastjl.project(torch.randn(2, 10), 8, out=torch.zeros(2, 8).to_sparse())


# --- item 10: empty batches given per parameter ------------------------------------------------


def test_projector_empty_batch_dict_works_like_an_empty_tensor():
    projector = fastjl.Projector(12 + 5, 8)
    from_tensor = projector.project(torch.zeros(0, 17))
    from_dict = projector.project({"w": torch.zeros(0, 3, 4), "b": torch.zeros(0, 5)})
    assert from_tensor.shape == from_dict.shape == (0, 8)
    assert from_dict.dtype == from_tensor.dtype
    # and a non-empty dict with the same layout still matches the concatenation
    grads = {"w": torch.randn(2, 3, 4), "b": torch.randn(2, 5)}
    flat = torch.cat([grads["w"].flatten(1), grads["b"]], 1)
    torch.testing.assert_close(projector.project(grads), projector.project(flat))


@pytest.mark.parametrize(
    "value, error", [(1.5, TypeError), (torch.tensor(3.0), TypeError), (True, TypeError), (0, ValueError)]
)
def test_traker_train_set_size_must_be_a_positive_integer(value, error, tmp_path):
    trak_core = pytest.importorskip("trak_core")
    with pytest.raises(error, match="train_set_size"):
        trak_core.TRAKer(torch.nn.Linear(2, 2), "classification", value, save_dir=tmp_path / "store")

"""fastjl.project_rows on the Triton backend (its kernel reading one row index per column of x):
against the entry-wise spec, on CPU under TRITON_INTERPRET=1 (conftest.py) or on the GPU."""

import pytest
import torch

import fastjl
from fastjl.spec import matrix_block

from .helpers import poisoned, relative_error
from .test_triton import DEVICE, TOLERANCE

pytest.importorskip("triton", reason="triton is not installed")


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch, proj_dim", [(3, 131), (17, 300)])  # odd sizes, several column tiles
def test_scattered_rows_match_the_spec(kind, dtype, batch, proj_dim):
    gen = torch.Generator().manual_seed(batch * 7 + proj_dim)
    rows = torch.cat([torch.randint(0, 10**6, (300,), generator=gen), torch.tensor([2**48 - 1, 7, 7, 0, 2**33 + 5])])
    x = torch.randn(batch, rows.numel(), generator=gen).to(dtype)
    out = fastjl.project_rows(x.to(DEVICE), rows.to(DEVICE), proj_dim, seed=5, kind=kind, backend="triton")
    ref = x.double() @ matrix_block(5, kind, rows.tolist(), range(proj_dim))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert relative_error(out.cpu(), ref) < TOLERANCE[(kind, dtype)]


def test_every_output_element_is_written_and_auto_agrees():
    from fastjl._backends import triton_backend

    x = torch.randn(5, 700, device=DEVICE)
    rows = torch.randperm(5000)[:700].to(DEVICE)
    out = poisoned((5, 300), device=DEVICE)
    triton_backend.project(x, out, seed=1, kind="rademacher", offset=0, row_index=rows)
    assert torch.isfinite(out).all()
    expected = fastjl.project_rows(x, rows, 300, seed=1, backend="torch")
    assert relative_error(out.cpu(), expected.cpu().double()) < TOLERANCE[("rademacher", torch.float32)]
    auto = fastjl.project_rows(x, rows, 300, seed=1)  # CUDA tensors: Triton; CPU tensors: torch
    assert relative_error(auto.cpu(), expected.cpu().double()) < TOLERANCE[("rademacher", torch.float32)]


def test_backend_choice_errors():
    x, rows = torch.randn(2, 3), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="project_rows"):
        fastjl.project_rows(x, rows, 8, backend="cuda")
    with pytest.raises(TypeError, match="float64"):
        fastjl.project_rows(x.double(), rows, 8, backend="triton")
    assert fastjl.project_rows(x[:0], rows, 8, backend="triton").shape == (0, 8)  # empty batch

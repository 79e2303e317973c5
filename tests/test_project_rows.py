"""fastjl.project_rows: x @ P[rows, :K] for scattered rows, against the entry-wise spec."""

import pytest
import torch

import fastjl
from fastjl.spec import matrix_block
from tests.helpers import poisoned


def _reference(x, rows, proj_dim, seed, kind):
    p = matrix_block(seed, kind, rows.tolist(), range(proj_dim))
    return x.double() @ p


@pytest.mark.parametrize("kind", fastjl.KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_scattered_rows_match_the_spec(kind, dtype):
    gen = torch.Generator().manual_seed(3)
    rows = torch.cat([torch.randint(0, 10**6, (40,), generator=gen), torch.tensor([2**48 - 1, 7, 7, 0])])
    x = torch.randn(3, rows.numel(), generator=gen).to(dtype)
    got = fastjl.project_rows(x, rows, 131, seed=5, kind=kind)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref = _reference(x, rows, 131, 5, kind)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


def test_contiguous_rows_equal_project_with_offset_and_scale(monkeypatch):
    from fastjl._backends import cpu_workers

    monkeypatch.setattr(cpu_workers, "CPU_BLOCK_BYTES", 64 << 10)  # several blocks and workers
    x = torch.randn(4, 3000)
    rows = torch.arange(1000, 4000)
    expected = fastjl.project(x, 200, seed=2, offset=1000, backend="torch", scale="jl")
    assert torch.equal(fastjl.project_rows(x, rows, 200, seed=2, scale="jl"), expected)


def test_an_embedding_gradient_through_the_rows_it_touches():
    """Example b's gradient is nonzero in rows v*d .. v*d+d-1 of the tokens v it looked up."""
    vocab, d, batch = 50, 6, 3
    gen = torch.Generator().manual_seed(4)
    tokens = torch.tensor([3, 17, 18, 40])
    h = torch.randn(batch, len(tokens), d, generator=gen)
    dense = torch.zeros(batch, vocab, d)
    dense[:, tokens] = h
    rows = (tokens[:, None] * d + torch.arange(d)).reshape(-1)
    got = fastjl.project_rows(h.reshape(batch, -1), rows, 64, seed=9)
    torch.testing.assert_close(got, fastjl.project(dense.reshape(batch, -1), 64, seed=9), rtol=1e-5, atol=1e-4)


def test_every_output_element_is_written():
    """The backend path project_rows uses, into a NaN-poisoned output (several column tiles)."""
    from fastjl._backends import torch_backend

    x, rows = torch.randn(2, 5), torch.tensor([9, 1, 4, 4, 0])
    out = poisoned((2, 300))
    previous = fastjl.set_block_budget(64 << 10)  # 128-column tiles: 3 of them, one partial
    try:
        torch_backend.project(x, out, seed=0, kind="rademacher", offset=0, row_index=rows)
    finally:
        fastjl.set_block_budget(previous)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), _reference(x, rows, 300, 0, "rademacher"), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "rows,error,match",
    [
        (torch.tensor([[0, 1, 2]]), TypeError, "1-D integer tensor"),
        ([0, 1, 2], TypeError, "1-D integer tensor"),
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "integer dtype"),
        (torch.tensor([True, False, True]), TypeError, "integer dtype"),
        (torch.tensor([0, 1]), ValueError, "rows has 2 entries but x has D = 3"),
        (torch.tensor([0, -1, 2]), ValueError, r"\[0, 2\^48\)"),
        (torch.tensor([0, 1, 2**48]), ValueError, r"\[0, 2\^48\)"),
    ],
)
def test_bad_rows_are_refused(rows, error, match):
    with pytest.raises(error, match=match):
        fastjl.project_rows(torch.randn(2, 3), rows, 8)


def test_not_differentiable_and_says_so():
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        fastjl.project_rows(x, torch.arange(3), 8)
    with torch.no_grad():
        assert fastjl.project_rows(x, torch.arange(3), 8).shape == (2, 8)
    with pytest.raises(ValueError, match="kind"):
        fastjl.project_rows(torch.randn(2, 3), torch.arange(3), 8, kind="sjlt")


def test_readme_snippet_runs_and_agrees_with_the_dense_projection():
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"### Scattered rows: `project_rows`\n.*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    dense = torch.zeros(2, 41, 6)
    dense[:, scope["tokens"]] = scope["h"].reshape(2, 4, 6)
    expected = fastjl.project(dense.reshape(2, -1), 1024, seed=0)
    torch.testing.assert_close(scope["y"], expected, rtol=1e-5, atol=1e-4)

"""Every bad input of fastjl.project raises a clear error naming the argument."""

import numpy as np
import pytest
import torch

import fastjl


def call(**overrides):
    args = dict(x=torch.randn(3, 10), proj_dim=4)
    args.update(overrides)
    return fastjl.project(args.pop("x"), args.pop("proj_dim"), **args)


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        (dict(x=np.ones((3, 10), dtype=np.float32)), TypeError, "x must be a torch.Tensor"),
        (dict(x=torch.randn(10)), ValueError, "2-D"),
        (dict(x=torch.randn(2, 3, 4)), ValueError, "2-D"),
        (dict(x=torch.ones(3, 10, dtype=torch.int64)), TypeError, "dtype"),
        (dict(x=torch.ones(3, 10, dtype=torch.bool)), TypeError, "dtype"),
        (dict(x=torch.ones(3, 10, dtype=torch.complex64)), TypeError, "dtype"),
        (dict(x=torch.randn(3, 10, dtype=torch.float64), backend="auto"), TypeError, "dtype"),
        (dict(x=torch.randn(3, 0)), ValueError, "D >= 1"),
        (dict(proj_dim=0), ValueError, "proj_dim"),
        (dict(proj_dim=-5), ValueError, "proj_dim"),
        (dict(proj_dim=2**32), ValueError, "proj_dim"),
        (dict(proj_dim=4.0), TypeError, "proj_dim"),
        (dict(proj_dim=True), TypeError, "proj_dim"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed="0"), TypeError, "seed"),
        (dict(kind="sjl"), ValueError, "kind"),  # sjlt is a kind since issue 13
        (dict(kind="Gaussian"), ValueError, "kind"),
        (dict(offset=-1), ValueError, "offset"),
        (dict(offset=2**48 - 5), ValueError, r"offset \+ D"),
        (dict(offset=2**48), ValueError, "offset"),
        (dict(offset=1.0), TypeError, "offset"),
        (dict(out=torch.empty(3, 5)), ValueError, "out must have shape"),
        (dict(out=torch.empty(4, 3)), ValueError, "out must have shape"),
        (dict(out=torch.empty(3, 4, dtype=torch.float16)), TypeError, "out must have dtype"),
        (dict(out=torch.empty(3, 4).numpy()), TypeError, "out must be a torch.Tensor"),
        (dict(out=torch.empty(3, 4, device="meta")), ValueError, "device"),
        (dict(backend="cublas"), ValueError, "backend must be one of"),
        (dict(scale="unit"), ValueError, "scale"),
        (dict(x=torch.tensor([[1.0, float("nan")]]), check_finite=True), ValueError, "NaN"),
        (dict(x=torch.tensor([[1.0, float("inf")]]), check_finite=True), ValueError, "NaN or inf"),
    ],
)
def test_bad_input(overrides, error, words):
    with pytest.raises(error, match=words):
        call(**overrides)


def test_offset_at_the_last_row_is_fine():
    y = call(x=torch.randn(3, 5), offset=2**48 - 5)
    assert y.shape == (3, 4)


def test_nan_passes_through_without_check_finite():
    y = call(x=torch.tensor([[1.0, float("nan")]]))
    assert torch.isnan(y).all()


def test_numpy_integer_arguments_are_accepted():
    y = call(proj_dim=np.int64(4), seed=np.uint64(2**64 - 1), offset=np.int32(7))
    assert y.shape == (3, 4)

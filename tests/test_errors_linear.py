"""Every bad input of fastjl.project_linear raises a clear error naming the argument."""

import numpy as np
import pytest
import torch

import fastjl


def call(**overrides):
    args = dict(a=torch.randn(3, 5, 6), g=torch.randn(3, 5, 4), proj_dim=8)
    args.update(overrides)
    return fastjl.project_linear(args.pop("a"), args.pop("g"), args.pop("proj_dim"), **args)


@pytest.mark.parametrize(
    "overrides,error,words",
    [
        (dict(a=np.ones((3, 5, 6), dtype=np.float32)), TypeError, "a must be a torch.Tensor"),
        (dict(g=[1.0, 2.0]), TypeError, "g must be a torch.Tensor"),
        (dict(a=torch.randn(6)), ValueError, r"a must be 2-D \(B, d_in\) or 3-D"),
        (dict(g=torch.randn(3, 5, 4, 1)), ValueError, r"g must be 2-D \(B, d_out\) or 3-D"),
        (dict(a=torch.randn(3, 6)), ValueError, "same rank"),
        (dict(a=torch.randn(2, 5, 6)), ValueError, "same batch size B, got 2 and 3"),
        (dict(a=torch.randn(3, 4, 6)), ValueError, "same number of tokens T, got 4 and 5"),
        (dict(a=torch.randn(3, 5, 0)), ValueError, "d_in >= 1"),
        (dict(g=torch.randn(3, 5, 0)), ValueError, "d_out >= 1"),
        (dict(a=torch.ones(3, 5, 6, dtype=torch.int32)), TypeError, "a must have dtype"),
        (dict(g=torch.randn(3, 5, 4, dtype=torch.float16)), TypeError, "same dtype"),
        (dict(a=torch.randn(3, 5, 6).double(), g=torch.randn(3, 5, 4).double()), TypeError, "dtype"),
        (dict(proj_dim=0), ValueError, "proj_dim"),
        (dict(kind="sjlt"), ValueError, "kind must be one of"),
        (dict(kind="kronecker", proj_dim=(2, 3, 4)), ValueError, "pair"),
        (dict(kind="kronecker", proj_dim=(0, 3)), ValueError, "k_out"),
        (dict(offset=2**48 - 23), ValueError, r"offset \+ D"),
        (dict(offset=2**48 - 27, bias=True), ValueError, r"offset \+ D"),
        (dict(bias=1), TypeError, "bias must be a bool"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(scale="sqrt"), ValueError, "scale"),
        (dict(backend="fast"), ValueError, "backend must be one of"),
        (dict(out=torch.empty(3, 9)), ValueError, "out must have shape"),
        (dict(a=torch.full((3, 5, 6), float("nan")), check_finite=True), ValueError, "a contains NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(overrides, error, words):
    with pytest.raises(error, match=words):
        call(**overrides)


def test_rows_ending_exactly_at_the_limit_are_accepted():
    # D = d_out * d_in = 24 (+ d_out = 28 with the bias): the last row used is 2^48 - 1.
    assert not torch.isnan(call(offset=2**48 - 24)).any()
    assert not torch.isnan(call(offset=2**48 - 28, bias=True)).any()

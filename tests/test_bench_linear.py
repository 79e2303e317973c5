"""``python -m fastjl.bench --op linear`` runs end to end on tiny shapes (no timing is asserted),
and its fused and materialize+project contenders compute the same projection."""

import json

import pytest
import torch

from fastjl.bench.__main__ import main
from fastjl.bench.linear_contenders import (
    LINEAR_CONTENDERS,
    Disagreement,
    LinearShape,
    check_agreement,
    relative_difference,
)
from fastjl.bench.linear_op import format_linear_table


def test_linear_op_prints_a_table_and_writes_json(tmp_path, capsys):
    code = main(["--op", "linear", "--device", "cpu", "--preset", "quick", "--reps", "1", "--save", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("fused-torch", "materialize+project-torch", "kronecker"):
        assert name in out
    assert "unavailable" in out  # the cuda backend reports why it did not run
    (path,) = tmp_path.glob("bench-linear-cpu-*.json")
    data = json.loads(path.read_text())
    assert data["op"] == "linear" and data["device"] and data["torch"] and data["fastjl"] and data["date"]
    assert data["rtol"] == 1e-5
    rows = data["results"]
    assert {(r["tokens"], r["contender"]) for r in rows} >= {
        (t, n) for t in (1, 3) for n in ("fused-torch", "materialize+project-torch", "kronecker")
    }
    for r in rows:
        assert r["op"] == "linear" and (r["batch"], r["d_in"], r["d_out"], r["proj_dim"]) == (4, 24, 20, 64)
        if r["ms"] is None:
            assert r["note"]
            continue
        assert r["ms"] > 0 and r["examples_per_s"] > 0 and r["peak_mib"] >= 0
        if r["contender"] == "kronecker":
            assert r["rel_diff"] is None and r["kind"] == "kronecker"
        else:
            assert 0 <= r["rel_diff"] <= 1e-5 and r["kind"] == "rademacher"


def test_unknown_linear_contender_and_wrong_preset_are_errors():
    assert main(["--op", "linear", "--device", "cpu", "--contenders", "fused-torch9"]) == 2
    assert main(["--op", "linear", "--device", "cpu", "--preset", "trak"]) == 2
    assert main(["--device", "cpu", "--preset", "gpt2"]) == 2


@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_fused_equals_materialize_project(tokens, kind):
    shape = LinearShape(batch=3, tokens=tokens, d_in=17, d_out=11, proj_dim=40, kind=kind, dtype=torch.float32)
    a, g = torch.randn(3, tokens, 17), torch.randn(3, tokens, 11)
    y_fused = LINEAR_CONTENDERS["fused-torch"](shape, "cpu")(a, g).clone()
    y_materialized = LINEAR_CONTENDERS["materialize+project-torch"](shape, "cpu")(a, g).clone()
    assert y_fused.abs().max() > 0
    assert relative_difference(y_fused, y_materialized) <= 1e-5
    runs = {"fused-torch": lambda a, g: y_fused, "materialize+project-torch": lambda a, g: y_materialized}
    assert set(check_agreement(runs, a, g, rtol=1e-5)) == {"torch"}


def test_disagreement_stops_the_benchmark():
    y = torch.ones(2, 8)
    runs = {"fused-torch": lambda a, g: y, "materialize+project-torch": lambda a, g: 1.001 * y}
    with pytest.raises(Disagreement, match="differ by 9.99e-04"):
        check_agreement(runs, torch.ones(2, 1, 3), torch.ones(2, 1, 4), rtol=1e-5)
    nan = {"fused-torch": lambda a, g: y * float("nan"), "materialize+project-torch": lambda a, g: y}
    with pytest.raises(Disagreement):
        check_agreement(nan, torch.ones(2, 1, 3), torch.ones(2, 1, 4), rtol=1e-5)


def test_linear_table_marks_unavailable_rows():
    row = dict(op="linear", contender="fused-cuda", batch=1, tokens=2, d_in=3, d_out=4, proj_dim=5, ms=None)
    assert "unavailable: no GPU" in format_linear_table([dict(row, note="no GPU")])

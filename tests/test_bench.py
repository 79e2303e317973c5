"""The benchmark entry point runs end to end (tiny shapes; no timing is asserted)."""

import importlib.util
import json

from fastjl.bench.__main__ import format_table, main


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    code = main(
        ["--device", "cpu", "--batch", "3", "--dim", "500", "--proj-dim", "130", "--reps", "2", "--save", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    for name in ("fastjl-torch", "dense-stored", "dense-generated"):
        assert name in out
    assert "unavailable" in out  # cuda/triton report why they did not run
    (path,) = tmp_path.glob("bench-cpu-*.json")
    data = json.loads(path.read_text())
    measured = {r["contender"]: r for r in data["results"] if r["ms"] is not None}
    assert measured["fastjl-torch"]["ms"] > 0 and measured["fastjl-torch"]["dim"] == 500
    assert data["device"] and data["torch"] and data["ceilings"]["matmul_tflops"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert path.with_suffix(".png").stat().st_size > 1000


def test_peak_memory_mode(capsys):
    assert main(["--device", "cpu", "--batch", "2", "--dim", "1000", "--proj-dim", "64", "--peak-memory"]) == 0
    assert "peak memory of fastjl-torch" in capsys.readouterr().out


def test_unknown_contender_is_an_error(capsys):
    assert main(["--device", "cpu", "--contenders", "fast_jl9", "--dim", "10", "--no-ceilings"]) == 2


def test_table_marks_unavailable_rows():
    row = dict(contender="x", batch=1, dim=2, proj_dim=3, ms=None, note="no GPU")
    assert "unavailable: no GPU" in format_table([row])


def test_contention_times_every_contender_again_under_load(tmp_path, capsys):
    code = main(
        ["--device", "cpu", "--batch", "2", "--dim", "300", "--proj-dim", "128", "--reps", "1", "--no-ceilings"]
        + ["--contenders", "fastjl-torch,dense-stored", "--contention", "1", "--save", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0 and "ms busy" in out and "slowdown" in out
    (path,) = tmp_path.glob("bench-cpu-*.json")
    rows = json.loads(path.read_text())["results"]
    assert [r["contender"] for r in rows] == ["fastjl-torch", "dense-stored"]
    for r in rows:
        assert r["ms_busy"] > 0 and abs(r["slowdown"] - r["ms_busy"] / r["ms"]) < 1e-9


def test_contention_rejects_negative_and_linear(capsys):
    assert main(["--device", "cpu", "--contention", "-1", "--no-ceilings"]) == 2
    assert main(["--device", "cpu", "--op", "linear", "--contention", "1"]) == 2
    assert "--contention" in capsys.readouterr().err


def test_busy_processes_run_and_stop():
    import multiprocessing as mp

    from fastjl.bench.contention import busy_processes

    before = set(mp.active_children())
    with busy_processes(2):
        running = set(mp.active_children()) - before
        assert len(running) == 2 and all(p.is_alive() for p in running)
    assert not any(p.is_alive() for p in running)


def test_sjlt_kind_against_index_add_of_the_same_buckets(capsys):
    """--kind sjlt: the dense baselines step aside, index-add (stored buckets, as the sjlt package
    does) is timed, and it computes the same matrix as fastjl's torch backend."""
    import torch

    from fastjl.bench.contenders import CONTENDERS, Shape, Unavailable

    code = main(["--device", "cpu", "--kind", "sjlt", "--sparsity", "2", "--batch", "3", "--dim", "700"]
                + ["--proj-dim", "130", "--reps", "1", "--no-ceilings"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "index-add" in out and "baseline of the dense kinds" in out
    shape = Shape(3, 700, 130, "sjlt", torch.float32, sparsity=2)
    x = torch.randn(3, 700)
    ours, theirs = CONTENDERS["fastjl-torch"](shape, "cpu")(x), CONTENDERS["index-add"](shape, "cpu")(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert shape.flops == 2 * 3 * 700 * 2
    try:
        CONTENDERS["index-add"](Shape(3, 700, 130, "rademacher", torch.float32), "cpu")
    except Unavailable as exc:
        assert "sparse kinds" in str(exc)
    else:
        raise AssertionError("index-add must refuse the dense kinds")

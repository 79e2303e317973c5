"""The demo end to end on a reduced configuration: LDS clearly above zero at K < n and K >= n."""

import json

from trak_core.demo.__main__ import parse_args
from trak_core.demo.run import DemoConfig, format_report, run_demo

SMALL = dict(n_train=300, n_targets=60, checkpoints=3, subsets=30, retrains=1, hidden=16, steps=150)


def test_demo_lds_is_clearly_positive_for_small_and_large_k(tmp_path):
    config = DemoConfig(**SMALL, proj_dims=(64, 512), out_dir=str(tmp_path), quiet=True)
    result = run_demo(config)
    runs = {(r.proj_dim, r.lambda_rule.startswith("default")): r for r in result.runs if r.kind == "rademacher"}
    assert sorted(runs) == [(64, False), (64, True), (512, False), (512, True)]
    # Kronecker features (hooks path, default λ) carry the signal too.
    kronecker = {r.proj_dim: r for r in result.runs if r.kind == "kronecker"}
    assert sorted(kronecker) == [64, 512]
    for proj_dim in (64, 512):
        assert kronecker[proj_dim].lds_low > 0.3, kronecker[proj_dim]
    # So do the sparse kinds (sjlt, and grass keeping about 4K of the D coordinates).
    sparse = {(r.kind, r.proj_dim): r for r in result.runs if r.kind in ("sjlt", "grass")}
    assert sorted(sparse) == [("grass", 64), ("grass", 512), ("sjlt", 64), ("sjlt", 512)]
    assert sparse["grass", 64].options == f"sparsity=1, mask_rate={256 / result.num_params:.3g}"
    for run in sparse.values():
        assert run.lds_low > 0.3, run
    # The default λ: LDS clearly positive (lower end of the 95% interval) below and above K = n.
    for proj_dim in (64, 512):
        assert runs[proj_dim, True].lds_low > 0.3, runs[proj_dim, True]
    # λ = 0 with K >= n inverts a singular XᵀX: most of the signal is lost.
    assert runs[512, True].lds > runs[512, False].lds + 0.2
    assert runs[512, False].lambda_mean == 0.0 and runs[512, True].lambda_mean > 0.0

    png = tmp_path / "trak_digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["lds"] for r in saved["runs"]] == [r.lds for r in result.runs]
    report = format_report(result)
    assert "K >= n" in report and "K < n" in report and "total" in report


def test_command_line_options_reach_the_config():
    argv = ["--proj-dims", "32,4096", "--no-trak-comparison", "--no-kronecker", "--device", "cpu", "--quiet"]
    config = parse_args(argv)
    assert config.proj_dims == (32, 4096) and not config.compare_trak and not config.kronecker and config.quiet
    config = parse_args(["--no-sparse", "--sparsity", "4", "--grass-multiplier", "2"])
    assert (config.sparse, config.sparsity, config.grass_multiplier) == (False, 4, 2)
    assert parse_args([]) == DemoConfig()

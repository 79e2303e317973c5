"""A newcomer's first ten minutes: what they read and run first says what it should.

Whether ``fastjl._C`` was built, the license, README snippets that paste into ``python``,
``--help`` texts without reStructuredText markup, the benchmarks' headers and peak-memory
column, and the demo's report of its stores and its figure's caption.
"""

import code
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import fastjl
from fastjl._backends import cuda_backend
from fastjl._extension import built_with_cuda

ROOT = Path(__file__).parent.parent
NOT_BUILT = "fastjl._C is not built or failed to load (No module named 'fastjl._C')"


# --- item 14: fastjl.backends() says whether fastjl._C is built --------------------------------


def fake_extension(archs: str):
    return types.SimpleNamespace(project=None, build_info=lambda: {"archs": archs, "spec_version": 1})


def host_only_extension():
    """What setup.py builds without nvcc: build_info says no CUDA, and no kernel entry points."""
    info = {"archs": "", "spec_version": 1, "cuda": False, "cuda_version": None}
    return types.SimpleNamespace(host_sparse_block=None, build_info=lambda: info)


def test_cpu_reason_says_the_extension_is_built_and_for_which_gpus(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_C", fake_extension("80-real 86-real 89-real 90-real 90-virtual"))
    reason = fastjl.backends("cpu")["cuda"].reason
    assert reason.startswith("fastjl._C built (sm_80, sm_86, sm_89, sm_90, +PTX compute_90)"), reason
    assert "needs a CUDA tensor, got a tensor on cpu" in reason


def test_cpu_reason_says_the_extension_is_not_built(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_C", None)
    monkeypatch.setattr(cuda_backend, "IMPORT_ERROR", NOT_BUILT)
    status = fastjl.backends("cpu")["cuda"]
    assert not status.available
    assert status.reason.startswith("fastjl._C not built (FASTJL_SKIP_EXTENSION=1 at install, or its C++ build")
    assert "needs a CUDA tensor, got a tensor on cpu" in status.reason
    assert "fastjl._C not built" in repr(fastjl.backends("cpu"))
    # Asking for it by name gives the same reason.
    with pytest.raises(RuntimeError, match="fastjl._C not built"):
        fastjl.project(torch.randn(2, 8), 4, backend="cuda")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_host_only_build_says_it_has_no_cuda(monkeypatch, device):
    """Checked before the device: even on a GPU, the reason is the build, not "rebuild fastjl"."""
    monkeypatch.setattr(cuda_backend, "_C", host_only_extension())
    reason = cuda_backend.availability(torch.device(device))
    assert reason.startswith("fastjl._C built without CUDA (no nvcc at install, or FASTJL_SKIP_CUDA_BUILD=1)"), reason
    assert "rebuild" not in reason
    assert cuda_backend.op_availability("project_sparse") == cuda_backend.build_state()
    if device == "cpu":
        assert "needs a CUDA tensor, got a tensor on cpu" in reason
        assert "built without CUDA" in repr(fastjl.backends("cpu"))


def test_a_build_that_fails_to_load_says_why(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_C", None)
    monkeypatch.setattr(cuda_backend, "IMPORT_ERROR", "fastjl._C is not built or failed to load (undefined symbol: x)")
    reason = cuda_backend.availability(torch.device("cpu"))
    assert "undefined symbol: x" in reason and "needs a CUDA tensor" in reason


def test_this_install_reports_its_own_build():
    reason = fastjl.backends("cpu")["cuda"].reason
    if cuda_backend._C is None:
        assert "fastjl._C not built" in reason or "failed to load" in reason
    elif not built_with_cuda(cuda_backend._C):
        assert reason.startswith("fastjl._C built without CUDA"), reason
    else:
        assert reason.startswith("fastjl._C built (sm_"), reason


# --- item 15 -------------------------------------------------------------------------------------


def test_license_is_the_mit_license_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the fastjl authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def readme_blocks(marker: str = "") -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]


def paste_errors(block: str) -> list[str]:
    """What the interactive prompt would reject, fed the block line by line as a paste is: the
    logic of ``code.InteractiveConsole.push`` ("single" mode; a statement runs as soon as it is
    complete, a compound one at the blank line that ends it)."""
    errors, buffer = [], []
    for line in block.splitlines() + [""]:
        buffer.append(line)
        try:
            compiled = code.compile_command("\n".join(buffer), "<stdin>", "single")
        except (SyntaxError, OverflowError, ValueError) as exc:
            errors.append(f"{line!r}: {exc}")
            compiled = True
        if compiled is not None:  # ran (or failed): the prompt starts a new statement
            buffer = []
    return errors


def test_paste_check_catches_a_def_followed_by_a_statement():
    assert paste_errors("def p(w): return w\nq = p(1)\n")
    assert not paste_errors("p = lambda w: w\nq = p(1)\n")


def test_readme_snippets_paste_into_the_python_prompt():
    blocks = readme_blocks()
    for marker in ("import fastjl\n", "from trak_core import TRAKer", "integrations.trak", "integrations.dattri"):
        assert any(marker in b for b in blocks), marker
    for block in blocks:
        assert paste_errors(block) == [], block


@pytest.mark.parametrize(
    "package,marker", [("dattri", "fastjl.integrations.dattri"), ("trak", "fastjl.integrations.trak")]
)
def test_readme_integration_snippets_run_pasted_into_python(tmp_path, package, marker):
    pytest.importorskip(package, reason=f"{package} is not installed (the README snippet needs it)")
    block = readme_blocks(marker)[0]
    # python -i reading a pipe compiles statement by statement like a pasted terminal session.
    stdin = block + "\nprint('SCORES', tuple(torch.as_tensor(scores).shape))\n"
    run = subprocess.run(
        [sys.executable, "-i", "-q"],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # traker writes ./trak_results
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert "Traceback" not in run.stderr and "SyntaxError" not in run.stderr, run.stderr[-3000:]
    assert "SCORES (32, 32)" in run.stdout, (run.stdout[-2000:], run.stderr[-2000:])


def help_text(parse_args, capsys) -> str:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    return capsys.readouterr().out


def test_help_texts_show_no_rst_backticks(capsys):
    from fastjl.bench.__main__ import parse_args as fastjl_bench
    from trak_core.bench.__main__ import parse_args as trak_bench
    from trak_core.demo.__main__ import parse_args as demo

    for parse_args, prog in ((fastjl_bench, "fastjl.bench"), (trak_bench, "trak_core.bench"), (demo, "trak_core.demo")):
        text = help_text(parse_args, capsys)
        assert f"python -m {prog}" in text
        assert "``" not in text and ":mod:" not in text, text


def test_demo_help_says_what_it_leaves_on_disk(capsys):
    from trak_core.demo.__main__ import parse_args

    text = " ".join(help_text(parse_args, capsys).split())
    assert "--remove-stores" in text and "stores/" in text and "MiB" in text
    assert parse_args(["--remove-stores"]).remove_stores and not parse_args([]).remove_stores


@pytest.mark.parametrize("threads,expected", [(1, "1 thread"), (2, "2 threads"), (16, "16 threads")])
def test_bench_header_counts_threads_in_english(monkeypatch, threads, expected):
    from fastjl.bench.__main__ import device_name

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert device_name("cpu").endswith(f" {expected}")


def test_peak_column_never_shows_a_bare_zero():
    from trak_core.bench.__main__ import format_peak

    assert format_peak(0.0, "cpu") == "n/a*"  # the CPU high-water mark did not move: unresolved
    assert format_peak(0.37, "cpu") == "0.4"  # a real value keeps its decimal (it printed "0")
    assert format_peak(0.0, "cuda") == "0.0"  # the CUDA allocator counts bytes: 0 is a value
    assert format_peak(None, "cpu") == "n/a"


def test_quick_featurize_benchmark_explains_an_unmeasurable_peak(capsys):
    from trak_core.bench.__main__ import PEAK_NA_NOTE, main

    result = main(["--preset", "quick", "--device", "cpu", "--batches", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split(" ")[0] in {r["path"] for r in result["rows"]}]
    assert len(rows) == len(result["rows"])
    for line, row in zip(rows, result["rows"]):
        peak = line.split()[3]
        assert peak == ("n/a*" if row["peak_mib"] == 0 else f"{row['peak_mib']:.1f}"), line
    assert (PEAK_NA_NOTE in out) == any(row["peak_mib"] == 0 for row in result["rows"])
    assert re.search(r", \d+ threads?$", out, re.M) and not re.search(r"\b1 threads\b", out)


def test_figure_caption_says_what_the_numbers_are_and_which_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from trak_core.demo.figure import save_attribution_figure

    captions = []
    original = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        captions.append(fig._suptitle.get_text())
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    rng = np.random.default_rng(0)
    save_attribution_figure(
        tmp_path / "f.png", rng.normal(size=(20, 5)), rng.random((20, 64)), rng.integers(0, 10, 20),
        rng.random((5, 64)), rng.integers(0, 10, 5), [0, 1], run="K=2048, kind=rademacher, λ = default",
    )  # fmt: skip
    assert "TRAK score" in captions[0] and "margin" in captions[0]
    assert "K=2048, kind=rademacher, λ = default" in captions[0]


def test_demo_reports_its_stores_and_removes_them_on_request(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from trak_core.demo.run import DemoConfig, format_report, run_demo

    tiny = dict(n_train=60, n_targets=20, checkpoints=1, subsets=4, retrains=1, hidden=8, steps=20, proj_dims=(16,))
    tiny.update(compare_trak=False, kronecker=False, quiet=True)
    kept = run_demo(DemoConfig(**tiny, out_dir=str(tmp_path / "kept")))
    stores = tmp_path / "kept" / "stores"
    assert kept.stores == str(stores) and stores.is_dir() and kept.stores_bytes > 0
    report = format_report(kept)
    assert f"stores: {stores} holds" in report and "MiB" in report
    assert f"rm -rf {stores}" in report and "--remove-stores" in report
    assert "K=16, kind=rademacher" in kept.figure_run and kept.figure_run in report

    removed = run_demo(DemoConfig(**tiny, out_dir=str(tmp_path / "removed"), remove_stores=True))
    assert removed.stores_removed and not (tmp_path / "removed" / "stores").exists()
    assert (tmp_path / "removed" / "trak_digits.png").is_file()
    assert "removed (--remove-stores)" in format_report(removed)
    shutil.rmtree(tmp_path / "kept")

"""``python -m trak_core.bench`` runs, and its dense paths agree (a benchmark of wrong features is useless)."""

import json

from trak_core.bench.__main__ import PATHS, main


def test_quick_featurize_benchmark(tmp_path, capsys):
    result = main(["--preset", "quick", "--device", "cpu", "--batches", "1", "--save", str(tmp_path)])
    rows = {row["path"]: row for row in result["rows"]}
    assert list(rows) == list(PATHS)
    for row in rows.values():
        assert row["ms_per_batch"] > 0 and row["examples_per_s"] > 0
    assert rows["torch.func+project"]["rel_diff_vs_torch_func"] == 0.0
    assert rows["hooks+project_linear"]["rel_diff_vs_torch_func"] < 1e-5
    assert rows["hooks+kronecker"]["rel_diff_vs_torch_func"] is None
    assert rows["project-only"]["rel_diff_vs_torch_func"] is None  # the floor: no features to compare
    saved = json.loads(next(tmp_path.glob("featurize-quick-cpu-*.json")).read_text())
    assert saved["rows"] == result["rows"] and saved["num_params"] == 12 * 16 + 16 + 16 * 5 + 5
    assert "hooks+project_linear" in capsys.readouterr().out


def test_gpt2_tiny_preset_runs_every_path_and_the_dense_ones_agree(capsys):
    """--preset gpt2-tiny: a Hugging Face GPT-2 (tied embeddings) under the causal-LM task."""
    import pytest

    pytest.importorskip("transformers", reason="the gpt2-tiny preset needs transformers")
    result = main(["--preset", "gpt2-tiny", "--device", "cpu", "--batches", "1", "--batch", "2", "--proj-dim", "64"])
    rows = {row["path"]: row for row in result["rows"]}
    assert list(rows) == list(PATHS)
    assert rows["hooks+project_linear"]["rel_diff_vs_torch_func"] < 1e-5
    for row in rows.values():
        assert abs(row["tokens_per_s"] - 64 * row["examples_per_s"]) < 1e-6 * row["tokens_per_s"]
    assert "tokens/s" in capsys.readouterr().out

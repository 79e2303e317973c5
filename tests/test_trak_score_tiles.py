"""The tiled-scoring benchmark (``python -m trak_core.bench.scores``) runs and scores correctly."""

import json

import pytest

from trak_core.bench.scores import first_tiles, main


def test_small_preset_scores_every_tile_correctly(tmp_path, capsys):
    result = main(["--preset", "scores-small", "--dir", str(tmp_path), "--save", str(tmp_path)])
    assert result["tiles_computed"] == result["tiles_total"] == 6 * 4  # 3000 / 512 -> 6 rows, 500 / 128 -> 4 cols
    assert result["first_tile_max_rel_error"] < 1e-5  # float32 products of K = 64 terms vs float64
    assert result["seconds"] > 0 and result["scores_per_s"] > 0 and result["peak_anon_mib"] >= 0
    assert result["scores_per_s"] * result["seconds"] == pytest.approx(3000 * 500)
    saved = json.loads(next(tmp_path.glob("scores-small-*.json")).read_text())
    assert saved["full_scores_mib"] == pytest.approx(3000 * 500 * 4 / 2**20)
    assert "tiles in" in capsys.readouterr().out
    assert not list(tmp_path.glob("tmp*")), "the synthetic store is removed"


def test_max_tiles_computes_only_the_first_tiles(tmp_path):
    result = main(["--preset", "scores-small", "--max-tiles", "7", "--dir", str(tmp_path)])
    assert result["tiles_computed"] == 7 and result["tiles_total"] == 24
    # Column-major: six full-height tiles of column 0 (the last one 3000 - 5·512 = 440 rows), then one of column 1.
    assert first_tiles((6, 4), 7) == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (0, 1)]
    assert result["scores_per_s"] * result["seconds"] == pytest.approx((5 * 512 + 440) * 128 + 512 * 128)
    assert result["first_tile_max_rel_error"] < 1e-5

"""Final scores, tile by tile: ``(1/M Σ_m Φ_m A_m⁻¹ Φ_target,mᵀ) ⊙ (1/M Σ_m Q_m)`` -> (n, t) on disk."""

from __future__ import annotations

import math

import numpy as np
import torch

from .linalg import load_rows
from .progress import log_time, progress_bar
from .store import Store


def mean_out_to_loss(store: Store, model_ids: list[int]) -> np.ndarray:
    """``(n,)`` float64: Q of every train example averaged over the checkpoints."""
    total = np.zeros(store.settings.train_set_size, dtype=np.float64)
    for model_id in model_ids:
        total += store.out_to_loss(model_id, mode="r")
    return total / len(model_ids)


def _score_tile(features: list, targets: list, rows: slice, device) -> torch.Tensor:
    """``Σ_m features[m][rows] @ targets[m]ᵀ`` as a float32 tensor on ``device``.

    ``targets`` are the already loaded ``(c, K)`` target blocks of the current tile column.
    """
    tile = None
    for feats, target in zip(features, targets):
        block = load_rows(feats, rows.start, rows.stop, device)
        part = block @ target.T
        tile = part if tile is None else tile.add_(part)
    return tile


def finalize_scores(
    store: Store,
    exp_name: str,
    model_ids: list[int],
    *,
    device,
    tile_shape: tuple[int, int],
    quiet: bool,
) -> np.memmap:
    """Computes (or resumes computing) the scores of experiment ``exp_name``.

    The (n, t) result is split into tiles of ``tile_shape`` (train rows, targets); each tile is
    written, flushed and then committed, so only ``tile_shape`` floats of scores are ever in
    memory, a kill loses at most the tile in progress, and finished tiles are never recomputed.
    The tiling is recorded with the experiment: a resumed run keeps the original one.  A call
    with another set of checkpoints starts the scores over.

    Returns:
        ``(n, t)`` float32 read-only memmap of the scores.
    """
    model_ids = sorted(int(m) for m in model_ids)
    record = store.experiment(exp_name)["scores"]
    if record is None or record["model_ids"] != model_ids:
        store.delete_tiles(exp_name)
        record = {"model_ids": model_ids, "tile_shape": [int(s) for s in tile_shape], "complete": False}
        store.update_experiment(exp_name, scores=record)
    n, t = store.settings.train_set_size, store.experiment(exp_name)["num_targets"]
    tile_rows, tile_cols = record["tile_shape"]
    grid = (math.ceil(n / tile_rows), math.ceil(t / tile_cols))
    tiles = store.tile_commits(exp_name, grid)
    if not tiles.all_done():
        with log_time(f"{exp_name}: scores {n} x {t} from {len(model_ids)} checkpoints, {grid[0] * grid[1]} tiles"):
            _fill_tiles(store, exp_name, model_ids, tiles, (tile_rows, tile_cols), device, quiet)
    if not record["complete"]:
        store.update_experiment(exp_name, scores={**record, "complete": True})
    return store.scores(exp_name, mode="r")


def _fill_tiles(store, exp_name, model_ids, tiles, tile_shape, device, quiet) -> None:
    tile_rows, tile_cols = tile_shape
    n, t = store.settings.train_set_size, store.experiment(exp_name)["num_targets"]
    scale = torch.from_numpy(mean_out_to_loss(store, model_ids) / len(model_ids)).float().to(device)
    features = [store.features(m, mode="r") for m in model_ids]
    target_files = [store.target_grads(exp_name, m, mode="r") for m in model_ids]
    scores = store.scores(exp_name, mode="r+")
    bar = progress_bar(
        total=tiles.shape[0] * tiles.shape[1],
        initial=tiles.num_done(),
        desc=f"score {exp_name}",
        quiet=quiet,
        unit="tile",
    )
    with bar:
        # Column-major over tiles: the target blocks of one tile column are loaded once.
        for j in range(tiles.shape[1]):
            cols = slice(j * tile_cols, min((j + 1) * tile_cols, t))
            todo = np.flatnonzero(~tiles.done((slice(None), j)))
            if not len(todo):
                continue
            targets = [load_rows(g, cols.start, cols.stop, device) for g in target_files]
            for i in todo:
                rows = slice(i * tile_rows, min((i + 1) * tile_rows, n))
                tile = _score_tile(features, targets, rows, device) * scale[rows, None]
                scores[rows, cols] = tile.cpu().numpy()
                scores.flush()
                tiles.commit((i, j))
                bar.update(1)

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


def _score_tile(features: list, targets: list, rows: slice, device, columns: slice = slice(None)) -> torch.Tensor:
    """``Σ_m features[m][rows, columns] @ targets[m][:, columns]ᵀ`` as a float32 tensor on ``device``.

    ``targets`` are the already loaded ``(c, K)`` target blocks of the current tile column;
    ``columns``: a module's block of per-module features (default: all columns).
    """
    tile = None
    for feats, target in zip(features, targets):
        block = load_rows(feats[:, columns], rows.start, rows.stop, device)
        part = block @ target[:, columns].T
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
    per_module: bool = False,
) -> np.memmap | dict[str, np.memmap]:
    """Computes (or resumes computing) the scores of experiment ``exp_name``.

    The (n, t) result is split into tiles of ``tile_shape`` (train rows, targets); each tile is
    written, flushed and then committed, so only ``tile_shape`` floats of scores are ever in
    memory, a kill loses at most the tile in progress, and finished tiles are never recomputed.
    The tiling is recorded with the experiment: a resumed run keeps the original one.  A call
    with another set of checkpoints starts the scores over.

    ``per_module`` (per-module stores only): the scores of each module from its block alone
    (block-diagonal TRAK: the block was finalized with the module's own regularized inverse),
    stored as ``(M, n, t)`` and resumable tile by tile like the others.  The whole-model scores
    of a per-module store are the sum of the modules' scores.

    Returns:
        ``(n, t)`` float32 read-only memmap of the scores; ``per_module``: ``{module: (n, t)}``
        read-only memmaps, in column-map order.
    """
    model_ids = sorted(int(m) for m in model_ids)
    key = "module_scores" if per_module else "scores"
    modules = store.settings.module_columns if per_module else None
    if per_module and modules is None:
        raise ValueError("per_module=True needs a store of per-module features (TRAKer(per_module=True))")
    record = store.experiment(exp_name).get(key)
    if record is None or record["model_ids"] != model_ids:
        store.delete_tiles(exp_name, per_module=per_module)
        record = {"model_ids": model_ids, "tile_shape": [int(s) for s in tile_shape], "complete": False}
        store.update_experiment(exp_name, **{key: record})
    n, t = store.settings.train_set_size, store.experiment(exp_name)["num_targets"]
    tile_rows, tile_cols = record["tile_shape"]
    grid = (*((len(modules),) if per_module else ()), math.ceil(n / tile_rows), math.ceil(t / tile_cols))
    tiles = store.tile_commits(exp_name, grid, per_module=per_module)
    if not tiles.all_done():
        what = f"{exp_name}: {key} {n} x {t} from {len(model_ids)} checkpoints, {math.prod(grid)} tiles"
        with log_time(what):
            _fill_tiles(store, exp_name, model_ids, tiles, (tile_rows, tile_cols), device, quiet, modules)
    if not record["complete"]:
        store.update_experiment(exp_name, **{key: {**record, "complete": True}})
    scores = store.scores(exp_name, mode="r", per_module=per_module)
    if per_module:
        return {name: scores[i] for i, (name, _, _) in enumerate(modules)}
    return scores


def _fill_tiles(store, exp_name, model_ids, tiles, tile_shape, device, quiet, modules=None) -> None:
    """Fills the unfinished tiles; ``modules``: the column map of per-module scores (tiles
    ``(module, i, j)``), None for whole-model scores (tiles ``(i, j)``)."""
    tile_rows, tile_cols = tile_shape
    n, t = store.settings.train_set_size, store.experiment(exp_name)["num_targets"]
    scale = torch.from_numpy(mean_out_to_loss(store, model_ids) / len(model_ids)).float().to(device)
    features = [store.features(m, mode="r") for m in model_ids]
    target_files = [store.target_grads(exp_name, m, mode="r") for m in model_ids]
    scores = store.scores(exp_name, mode="r+", per_module=modules is not None)
    # (index prefix of a tile and of its scores, feature columns) per array of tiles
    layers = [((), slice(None))] if modules is None else [((i,), slice(a, b)) for i, (_, a, b) in enumerate(modules)]
    bar = progress_bar(total=math.prod(tiles.shape), initial=tiles.num_done(),
                       desc=f"score {exp_name}", quiet=quiet, unit="tile")  # fmt: skip
    with bar:
        # Column-major over tiles: the target blocks of one tile column are loaded once.
        for j in range(tiles.shape[-1]):
            cols = slice(j * tile_cols, min((j + 1) * tile_cols, t))
            if tiles.done((..., j)).all():
                continue
            targets = [load_rows(g, cols.start, cols.stop, device) for g in target_files]
            for prefix, columns in layers:
                for i in np.flatnonzero(~tiles.done((*prefix, slice(None), j))):
                    rows = slice(i * tile_rows, min((i + 1) * tile_rows, n))
                    tile = _score_tile(features, targets, rows, device, columns) * scale[rows, None]
                    scores[(*prefix, rows, cols)] = tile.cpu().numpy()
                    scores.flush()
                    tiles.commit((*prefix, i, j))
                    bar.update(1)

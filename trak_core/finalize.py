"""Finalizing one checkpoint: ``XᵀX`` in one pass, λ, Cholesky, then ``X (XᵀX + λI)⁻¹`` to disk."""

from __future__ import annotations

import logging

import torch

from .linalg import RegularizedSolver, accumulate_xtx, load_rows, row_blocks
from .progress import log_time, progress_bar
from .regularization import resolve_lambda
from .store import Store

logger = logging.getLogger("trak_core")


def finalize_model(
    store: Store,
    model_id: int,
    *,
    lambda_reg: float | None,
    lambda_scale: float,
    xtx_dtype: torch.dtype,
    device,
    block_rows: int,
    quiet: bool,
) -> dict:
    """Writes the finalized features of checkpoint ``model_id`` and marks it finalized.

    Reads ``grads`` (n, K) twice, ``block_rows`` rows at a time; holds one (K, K) matrix and
    its factor.  A kill before the final metadata update means the checkpoint is finalized again
    from the start on the next run (finalization is one unit of work per checkpoint).

    Per-module features (``store.settings.module_columns``) are finalized block by block
    (block-diagonal TRAK, see :func:`finalize_blocks`).

    Returns:
        The checkpoint's metadata record (with ``lambda``, ``solver`` and ``xtx_trace``; lists in
        column-map order for per-module features).
    """
    if store.settings.module_columns is not None:
        return finalize_blocks(store, model_id, lambda_reg=lambda_reg, lambda_scale=lambda_scale,
                               xtx_dtype=xtx_dtype, device=device, block_rows=block_rows, quiet=quiet)  # fmt: skip
    with log_time(f"model {model_id}: XᵀX ({store.settings.train_set_size} rows, {xtx_dtype})"):
        xtx = store_xtx(store, model_id, xtx_dtype, device, block_rows)
    lam = resolve_lambda(xtx, store.settings.train_set_size, lambda_reg, lambda_scale)
    with log_time(f"model {model_id}: factorize XᵀX + λI (λ={lam:.4g})"):
        solver = RegularizedSolver(xtx, lam)
    return write_features(store, model_id, solver, lam, xtx, device=device, block_rows=block_rows, quiet=quiet)


def store_xtx(store: Store, model_id: int, xtx_dtype: torch.dtype, device, block_rows: int) -> torch.Tensor:
    """``XᵀX`` of the train gradients of checkpoint ``model_id`` in ``store``, one streaming pass."""
    return accumulate_xtx(store.train_grads(model_id, mode="r"), xtx_dtype, device, block_rows)


def write_features(
    store: Store, model_id: int, solver: RegularizedSolver, lam: float, xtx: torch.Tensor, *, device, block_rows, quiet
) -> dict:
    """Writes ``X (XᵀX + λI)⁻¹`` for the rows of ``store`` with a factorized ``solver``; marks them finalized.

    ``xtx`` may be the ``XᵀX`` of more rows than ``store`` holds (a shard of a sharded store)."""
    grads = store.train_grads(model_id, mode="r")
    n = grads.shape[0]
    features = store.features(model_id, mode="r+")
    with log_time(f"model {model_id}: features X (XᵀX + λI)⁻¹"):
        blocks = list(row_blocks(n, block_rows))
        for start, stop in progress_bar(blocks, desc=f"finalize model {model_id}", quiet=quiet, unit="block"):
            block = load_rows(grads, start, stop, device)
            features[start:stop] = solver.solve_rows(block).float().cpu().numpy()
        features.flush()
    store.update_model(
        model_id, finalized=True, **{"lambda": lam, "solver": solver.method, "xtx_trace": float(torch.trace(xtx))}
    )
    return store.model(model_id)


def finalize_blocks(
    store: Store,
    model_id: int,
    *,
    lambda_reg: float | None,
    lambda_scale: float,
    xtx_dtype: torch.dtype,
    device,
    block_rows: int,
    quiet: bool,
) -> dict:
    """Per-module features: each module's columns ``X_m`` become ``X_m (X_mᵀX_m + λ_m I)⁻¹``.

    λ_m follows the same rule as the whole model's λ, applied to the module's own ``X_mᵀX_m``
    (a given ``lambda_reg`` is used for every module).  One (K, K) matrix exists at a time; the
    train gradients are read twice per module.  As for whole features, finalizing is one unit of
    work per checkpoint: a kill before the final metadata update restarts it.
    """
    grads = store.train_grads(model_id, mode="r")
    features = store.features(model_id, mode="r+")
    lambdas, solvers, traces = [], [], []
    for name, start, stop in progress_bar(store.settings.module_columns, desc=f"finalize model {model_id}",
                                          quiet=quiet, unit="module"):  # fmt: skip
        block = grads[:, start:stop]  # a view: rows are read block_rows at a time
        with log_time(f"model {model_id}, module {name!r}: XᵀX, λ, features"):
            xtx = accumulate_xtx(block, xtx_dtype, device, block_rows)
            lam = resolve_lambda(xtx, store.settings.train_set_size, lambda_reg, lambda_scale)
            solver = RegularizedSolver(xtx, lam)
            for first, last in row_blocks(block.shape[0], block_rows):
                rows = load_rows(block, first, last, device)
                features[first:last, start:stop] = solver.solve_rows(rows).float().cpu().numpy()
        lambdas.append(lam)
        solvers.append(solver.method)
        traces.append(float(torch.trace(xtx)))
    features.flush()
    store.update_model(model_id, finalized=True, **{"lambda": lambdas, "solver": solvers, "xtx_trace": traces})
    return store.model(model_id)

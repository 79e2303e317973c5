"""Kill a real TRAK run with SIGKILL mid-featurize and mid-scoring, rerun it: nothing lost, nothing redone.

This file is also the worker: ``python -m tests.test_trak_resume SAVE_DIR [--slow-batches S] [--slow-tiles S]``
runs the whole TRAKer pipeline on the tiny problem of ``test_trak_exact``; the sleeps only widen
the window in which the parent kills it.
"""

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import trak_core
import trak_core.scoring

from .test_trak_exact import N_TARGETS, N_TRAIN, make_problem

REPO = Path(__file__).resolve().parents[1]
BATCH = 4
SETTINGS = dict(proj_dim=32, score_tile=(6, 4))  # 10 x 3 = 30 score tiles
TIMEOUT_S = 120


def run_pipeline(save_dir, slow_batches=0.0, slow_tiles=0.0, device=None):
    """The TRAK pipeline, written the way a traker user writes it (restartable as is)."""
    model, checkpoints, train, targets = make_problem()
    settings = {**SETTINGS, **({"device": device} if device else {})}
    model.to(device or "cpu")  # as a traker user does: the model on the device it runs on
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=save_dir, quiet=True, **settings)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        for start in range(0, N_TRAIN, BATCH):
            traker.featurize((train[0][start : start + BATCH], train[1][start : start + BATCH]), num_samples=BATCH)
            time.sleep(slow_batches)
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("targets", ckpt, model_id, N_TARGETS)
        for start in range(0, N_TARGETS, BATCH):
            traker.score((targets[0][start : start + BATCH], targets[1][start : start + BATCH]), num_samples=BATCH)
            time.sleep(slow_batches)
    if slow_tiles:
        score_tile = trak_core.scoring._score_tile

        def slow_score_tile(*args, **kwargs):
            time.sleep(slow_tiles)
            return score_tile(*args, **kwargs)

        trak_core.scoring._score_tile = slow_score_tile
    return np.array(traker.finalize_scores("targets"))


# One thread per worker: the problem is tiny, and idle OpenMP threads only compete with the parent.
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start_worker(save_dir, *options):
    command = [sys.executable, "-m", "tests.test_trak_resume", str(save_dir), *options]
    return subprocess.Popen(command, cwd=REPO, env=WORKER_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def progress(save_dir):
    """(train rows done per checkpoint, score tiles done, tiles total), read-only; None until they exist."""
    try:
        store = trak_core.Store.open(save_dir)
    except FileNotFoundError:
        return None
    rows = []
    for model_id in (0, 1):
        try:
            rows.append(store.train_commits(model_id, mode="r").num_done())
        except FileNotFoundError:
            rows.append(0)
    experiment = store.experiment("targets")
    if experiment is None or experiment["scores"] is None:
        return rows, 0, None
    tile_rows, tile_cols = experiment["scores"]["tile_shape"]
    grid = (math.ceil(N_TRAIN / tile_rows), math.ceil(N_TARGETS / tile_cols))
    try:
        return rows, store.tile_commits("targets", grid, mode="r").num_done(), grid[0] * grid[1]
    except FileNotFoundError:
        return rows, 0, grid[0] * grid[1]


def kill_when(worker, save_dir, condition, what):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        state = progress(save_dir)
        if state is not None and condition(*state):
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            assert worker.returncode == -signal.SIGKILL
            return state
        if worker.poll() is not None:
            raise AssertionError(f"worker ended before {what}: {worker.stdout.read().decode()[-2000:]}")
        time.sleep(0.02)
    worker.kill()
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_featurize_and_mid_scoring_then_resume(tmp_path):
    reference = run_pipeline(tmp_path / "reference")
    save_dir = tmp_path / "killed"

    # 1. Killed while featurizing checkpoint 1, checkpoint 0 being complete.
    worker = start_worker(save_dir, "--slow-batches", "0.1")
    rows, _, _ = kill_when(
        worker, save_dir, lambda rows, tiles, total: rows[0] == N_TRAIN and 0 < rows[1] < N_TRAIN, "featurizing"
    )
    assert rows[0] == N_TRAIN and 0 < rows[1] < N_TRAIN

    # 2. Rerun: finishes featurizing, finalizes, scores the targets; killed half-way through the score tiles.
    worker = start_worker(save_dir, "--slow-tiles", "0.2")
    _, tiles, total = kill_when(
        worker, save_dir, lambda rows, tiles, total: total is not None and 0 < tiles < total, "scoring tiles"
    )
    assert 0 < tiles < total

    # 3. Rerun to the end.
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_trak_resume", str(save_dir)],
        cwd=REPO,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]

    store = trak_core.Store.open(save_dir)
    scores = np.array(store.scores("targets", mode="r"))
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6 * np.abs(reference).max())
    # Every unit of work was committed exactly once across the three processes: none lost (0),
    # none computed again after it was finished (2).
    for model_id in (0, 1):
        assert store.train_commits(model_id, mode="r").counts().tolist() == [1] * N_TRAIN
        assert store.target_commits("targets", model_id, mode="r").counts().tolist() == [1] * N_TARGETS
    assert (store.tile_commits("targets", (10, 3), mode="r").counts() == 1).all()
    assert store.experiment("targets")["scores"]["complete"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("save_dir")
    parser.add_argument("--slow-batches", type=float, default=0.0)
    parser.add_argument("--slow-tiles", type=float, default=0.0)
    args = parser.parse_args()
    run_pipeline(args.save_dir, args.slow_batches, args.slow_tiles)


if __name__ == "__main__":
    main()

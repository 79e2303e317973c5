"""trak_core under ``torchrun`` (gloo, CPU): 2 and 3 ranks give one process's scores.

This file is also the worker, run by ``torchrun -m tests.test_trak_distributed SAVE_DIR OUT
--feed all|sampler [--stop-after featurize]``: the TRAKer pipeline of ``test_trak_resume`` on the
tiny problem of ``test_trak_exact``, written the way a traker user writes it; ``--feed sampler``
gives each rank its ``DistributedSampler(shuffle=False)`` share of the train set and of the
targets (passed with ``inds=``), ``--feed all`` gives every rank everything (``num_samples=``).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trak_core

from .test_trak_exact import N_TARGETS, N_TRAIN, make_problem
from .test_trak_resume import BATCH, SETTINGS, run_pipeline

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 90  # a hung collective fails the test instead of blocking CI

# Tolerance against the one-process store.  Both compute the same float32 features, but the
# ranks see sub-batches (another matmul blocking: float32 rounding, ~1e-7 relative, in the
# projected gradients) and XᵀX is summed in another order (float64: ~1e-16, negligible).  A
# relative perturbation δ of the gradients moves Φ(ΦᵀΦ+λI)⁻¹Φ_tᵀ by at most ~(2 + 2κ)δ with κ
# the condition number of ΦᵀΦ+λI (below 1e2 with the default λ on this problem), so the scores
# agree to ~1e-5 of their largest magnitude; measured: see the test's assertion message.
RTOL = 1e-5


def worker(save_dir: str, out: str, feed: str, stop_after: str | None, backend: str = "gloo") -> None:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)
    settings = dict(SETTINGS)
    if backend == "nccl":  # one GPU per rank; the store's tensors cross ranks on it
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        settings["device"] = "cuda"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if feed == "rank0-only":  # a DDP script using trak_core on rank 0 alone (TRAK_CORE_DISTRIBUTED=0)
        if rank == 0:
            np.save(out, np.asarray(run_pipeline(save_dir)))
        dist.barrier()  # the script's own collective: every rank reaches it
        dist.destroy_process_group()
        return
    model, checkpoints, train, targets = make_problem()
    model.to(settings.get("device", "cpu"))
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=save_dir, quiet=True, **settings)

    def feed_rows(size):
        if feed == "all":
            return np.arange(size)
        return np.array(list(DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=False)))

    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        rows = feed_rows(N_TRAIN)
        for start in range(0, len(rows), BATCH):
            index = torch.from_numpy(rows[start : start + BATCH])
            traker.featurize((train[0][index], train[1][index]), inds=index.numpy())
    if stop_after != "featurize":
        traker.finalize_features()
        for model_id, ckpt in enumerate(checkpoints):
            traker.start_scoring_checkpoint("targets", ckpt, model_id, N_TARGETS)
            rows = feed_rows(N_TARGETS)
            for start in range(0, len(rows), BATCH):
                index = torch.from_numpy(rows[start : start + BATCH])
                traker.score((targets[0][index], targets[1][index]), inds=index.numpy())
        scores = traker.finalize_scores("targets")
        if rank == 0:
            np.save(out, np.asarray(scores))
    traker.close()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(ranks: int, save_dir, out, *options, env=None) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "tests.test_trak_distributed", str(save_dir), str(out), *options,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same pipeline in one process with no torch.distributed (today's store)."""
    save_dir = tmp_path_factory.mktemp("one")
    scores = run_pipeline(save_dir)
    assert (save_dir / "metadata.json").exists() and not (save_dir / "shards.json").exists()
    return scores


@pytest.mark.parametrize("ranks, feed", [(2, "all"), (3, "sampler")])
def test_torchrun_gives_the_scores_of_one_process(tmp_path, one_process, ranks, feed):
    out = tmp_path / "scores.npy"
    torchrun(ranks, tmp_path / "store", out, "--feed", feed)
    scores = np.load(out)
    assert scores.shape == one_process.shape == (N_TRAIN, N_TARGETS)
    error = np.abs(scores - one_process).max() / np.abs(one_process).max()
    assert error < RTOL, f"{ranks} ranks: max |Δ| / max |score| = {error:.2e}"
    # One shard per rank, each an ordinary store holding only its rows (i ≡ s mod ranks).
    for shard in range(ranks):
        store = trak_core.Store.open(tmp_path / "store" / "shards" / f"{shard}-of-{ranks}")
        assert store.settings.train_set_size == len(range(shard, N_TRAIN, ranks))
        counts = store.train_commits(0, mode="r").counts()
        assert (counts == 1).all(), "every row featurized exactly once"


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_one_nccl_rank_on_a_gpu_finishes_a_store_two_gloo_ranks_featurized(tmp_path, one_process):
    """The nccl code path (collectives on CUDA tensors): two gloo ranks on the CPU featurize and
    stop; one nccl rank (all one GPU holds) takes over both shards of the sharded store on the
    GPU, finalizes and scores.  (A one-rank job on a fresh store is an ordinary store: no
    collectives.)  Same features, so the scores agree with one CPU process to RTOL."""
    torchrun(2, tmp_path / "store", tmp_path / "unused.npy", "--feed", "all", "--stop-after", "featurize")
    out = tmp_path / "scores.npy"
    torchrun(1, tmp_path / "store", out, "--feed", "all", "--backend", "nccl")
    scores = np.load(out)
    error = np.abs(scores - one_process).max() / np.abs(one_process).max()
    assert error < RTOL, f"nccl, 1 rank after 2 gloo ranks: max |Δ| / max |score| = {error:.2e}"


def test_one_process_finishes_a_store_two_ranks_featurized_bitwise(tmp_path):
    """Resume with another number of ranks: 2 ranks featurize and stop; one process (no
    torch.distributed) takes over both shards, finalizes and scores.  XᵀX is summed in shard
    order either way, so the scores equal the 2-rank run's bit for bit."""
    torchrun(2, tmp_path / "full", tmp_path / "full.npy", "--feed", "all")
    torchrun(2, tmp_path / "resumed", tmp_path / "unused.npy", "--feed", "all", "--stop-after", "featurize")
    traker_scores = run_pipeline(tmp_path / "resumed")  # featurizes nothing again: all rows are committed
    np.testing.assert_array_equal(traker_scores, np.load(tmp_path / "full.npy"))
    for shard in range(2):
        store = trak_core.Store.open(tmp_path / "resumed" / "shards" / f"{shard}-of-2")
        assert (store.train_commits(1, mode="r").counts() == 1).all(), "nothing featurized twice"


def test_opting_out_lets_one_rank_of_a_ddp_job_use_trak_core_alone(tmp_path, one_process):
    """TRAK_CORE_DISTRIBUTED=0: trak_core ignores the process group, so rank 0 alone runs the
    single-process pipeline (an ordinary store, no barrier waiting for the other ranks)."""
    out = tmp_path / "scores.npy"
    torchrun(2, tmp_path / "store", out, "--feed", "rank0-only", env={"TRAK_CORE_DISTRIBUTED": "0"})
    np.testing.assert_array_equal(np.load(out), one_process)
    assert (tmp_path / "store" / "metadata.json").exists() and not (tmp_path / "store" / "shards.json").exists()


def test_the_scoring_benchmark_reports_every_rank(tmp_path):
    """``torchrun -m trak_core.bench.scores``: each rank scores its shard of the train rows and
    rank 0 saves every rank's peak memory and its first tile's check in one ``-2ranks`` JSON."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "trak_core.bench.scores",
        "--preset", "scores-small", "--max-tiles", "3", "--save", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-6000:]
    (path,) = tmp_path.glob("scores-small-cpu-*-2ranks.json")
    result = json.loads(path.read_text())
    assert [r["rank"] for r in result["per_rank"]] == [0, 1]
    assert [r["train"] for r in result["per_rank"]] == [1500, 1500]  # rows i ≡ rank (mod 2) of 3000
    assert all(r["tiles_computed"] == 3 and r["first_tile_max_rel_error"] < 1e-5 for r in result["per_rank"])
    assert result["peak_anon_mib_per_rank"] == [r["peak_anon_mib"] for r in result["per_rank"]]
    assert "peak anonymous memory per rank" in done.stdout


def test_a_sharded_store_refuses_other_settings(tmp_path):
    torchrun(2, tmp_path / "store", tmp_path / "unused.npy", "--feed", "all", "--stop-after", "featurize")
    model, _, _, _ = make_problem()
    with pytest.raises(trak_core.StoreMismatchError, match="proj_dim"):
        trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path / "store", quiet=True, proj_dim=16)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("save_dir")
    parser.add_argument("out")
    parser.add_argument("--feed", choices=("all", "sampler", "rank0-only"), default="all")
    parser.add_argument("--stop-after", choices=("featurize",))
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    args = parser.parse_args()
    worker(args.save_dir, args.out, args.feed, args.stop_after, args.backend)

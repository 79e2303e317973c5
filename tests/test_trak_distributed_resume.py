"""trak_core under ``torchrun`` (gloo, CPU): a rank SIGKILLed mid-featurize or mid-scoring, the job
relaunched with the same ranks, other ranks or one process, ends with the uninterrupted scores and
every row and tile committed exactly once; a second writer of a shard is refused; shards written
concurrently (or killed mid-write) all open read-only and pass the store's integrity checks.

This file is also the worker, run as ``torchrun -m tests.test_trak_distributed_resume SAVE_DIR OUT
[--kill-rank R --kill-at featurize|score|tile --kill-after N] [--open-only [--fresh]]``: the
pipeline of ``test_trak_distributed.worker`` (``--feed all``), where rank R kills itself with
SIGKILL right after its N-th featurize/score call that computed rows (the rows are committed), or
as it starts its (N+1)-th score tile (N tiles committed): the kill point is a count, not a race.
``--open-only`` only builds the TRAKer (``load_from_save_dir=not --fresh``) and closes it.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import trak_core

from .test_trak_distributed import REPO, RTOL, free_port
from .test_trak_exact import N_TARGETS, N_TRAIN, make_problem
from .test_trak_resume import BATCH, SETTINGS, run_pipeline

TIMEOUT_S = 60  # per launch: a hung collective fails the test instead of blocking CI
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BATCHES = N_TRAIN // BATCH  # featurize calls per checkpoint (15); with --feed all each computes rows on every rank


# ---- the worker ----------------------------------------------------------------------------------


def install_kill(rank: int, at: str, after: int) -> None:
    """Makes this process SIGKILL itself at a counted point (see the module docstring)."""
    import trak_core.scoring
    import trak_core.shard_inboxes
    import trak_core.sharded_traker
    from trak_core.sharded_traker import ShardedTRAKer

    if int(os.environ.get("RANK", "0")) != rank:
        return
    count = 0

    def tick(computed: int) -> None:
        nonlocal count
        count += computed > 0
        if count == after:
            os.kill(os.getpid(), signal.SIGKILL)

    if at == "tile":
        score_tile = trak_core.scoring._score_tile

        def counted_tile(*args, **kwargs):
            tick(1)
            return score_tile(*args, **kwargs)

        # Counted at the entry of a tile: the kill at call N+1 leaves exactly N tiles committed.
        after += 1
        trak_core.scoring._score_tile = counted_tile
        return
    if at == "xtx":  # finalize_features, at the entry of the N-th shard's XᵀX pass
        store_xtx = trak_core.sharded_traker.store_xtx

        def counted_xtx(*args, **kwargs):
            tick(1)
            return store_xtx(*args, **kwargs)

        trak_core.sharded_traker.store_xtx = counted_xtx
        return
    if at == "finalized":  # finalize_features: the N-th shard's features written, not yet recorded
        update_model = trak_core.Store.update_model

        def counted_update(self, model_id, **fields):
            if fields.get("finalized"):
                tick(1)
            return update_model(self, model_id, **fields)

        trak_core.Store.update_model = counted_update
        return
    if at == "merge":  # finalize_features, right after the N-th merge that copied inbox rows in
        merge = trak_core.shard_inboxes.merge

        def counted_merge(*args, **kwargs):
            copied = merge(*args, **kwargs)
            tick(copied)
            return copied

        trak_core.shard_inboxes.merge = counted_merge
        return
    method = getattr(ShardedTRAKer, at)

    def counted(self, *args, **kwargs):
        computed = method(self, *args, **kwargs)
        tick(computed)  # after the call: its rows are written, flushed and committed
        return computed

    setattr(ShardedTRAKer, at, counted)


def count_rows(prefix: str) -> None:
    """Appends ``model_id rows`` to ``PREFIX.RANK`` after every featurize call that computed rows
    (before a kill installed later: the killed call is counted too), so a test can add up every
    row computed over all launches."""
    from trak_core.sharded_traker import ShardedTRAKer

    featurize = ShardedTRAKer.featurize

    def counted(self, *args, **kwargs):
        computed = featurize(self, *args, **kwargs)
        if computed:
            with open(f"{prefix}.{os.environ.get('RANK', '0')}", "a") as file:
                file.write(f"{self._train['model_id']} {computed}\n")
        return computed

    ShardedTRAKer.featurize = counted


def open_only(save_dir: str, fresh: bool) -> None:
    """Builds the TRAKer and closes it; a rank that fails prints ``rank R: Error: message`` and
    exits 1 only after every rank got this far (a barrier), so torchrun cannot stop a rank
    before it has reported."""
    import torch.distributed as dist

    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    failed = False
    try:
        trak_core.TRAKer(
            make_problem()[0], "classification", N_TRAIN, save_dir=save_dir, load_from_save_dir=not fresh,
            quiet=True, **SETTINGS,
        ).close()  # fmt: skip
    except Exception as error:
        print(f"rank {os.environ.get('RANK', 0)}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        failed = True
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if failed:
        sys.exit(1)


# ---- launching -----------------------------------------------------------------------------------


def torchrun(ranks: int, save_dir, out, *options) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "tests.test_trak_distributed_resume", str(save_dir), str(out), *options,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)


def log(done: subprocess.CompletedProcess) -> str:
    return f"rc {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def killed(ranks: int, save_dir, rank: int, at: str, after: int, *options) -> None:
    options = ("--kill-rank", str(rank), "--kill-at", at, "--kill-after", str(after), *options)
    done = torchrun(ranks, save_dir, save_dir.parent / "unused.npy", *options)
    assert done.returncode != 0, "the job was not killed: " + log(done)
    assert "Signal 9 (SIGKILL)" in done.stderr or "exitcode  : -9" in done.stderr, log(done)


def finished(ranks: int, save_dir, out, *options) -> np.ndarray:
    done = torchrun(ranks, save_dir, out, *options)
    assert done.returncode == 0, log(done)
    return np.load(out)


# ---- checking a store ----------------------------------------------------------------------------


def shard_stores(save_dir, num_shards: int) -> list:
    return [trak_core.Store.open(save_dir / "shards" / f"{s}-of-{num_shards}") for s in range(num_shards)]


def verify(save_dir, num_shards: int) -> None:
    """Opens every array of every shard read-only: ``open_npy`` checks each header, shape, dtype
    and size against the shard's metadata, and a file holding committed data must be there."""
    for store in shard_stores(save_dir, num_shards):
        for model_id in store.model_ids():
            if store.train_commits(model_id, mode="r").num_done():
                store.train_grads(model_id, mode="r")
                store.out_to_loss(model_id, mode="r")
            if store.model(model_id)["finalized"]:
                store.features(model_id, mode="r")
            if store.experiment("targets") is not None:
                try:
                    if store.target_commits("targets", model_id, mode="r").num_done():
                        store.target_grads("targets", model_id, mode="r")
                except FileNotFoundError:  # never scored in this shard: nothing committed to miss
                    pass
        grid = store._score_grid("targets") if store.experiment("targets") is not None else None
        if grid is not None:
            try:
                if store.tile_commits("targets", grid, mode="r").num_done():
                    store.scores("targets", mode="r")
            except FileNotFoundError:
                pass


def assert_committed_once(save_dir, num_shards: int) -> None:
    """Every train row, target row and score tile of every shard committed exactly once over all
    the launches: none lost (0), none computed again after it was finished (2)."""
    for s, store in enumerate(shard_stores(save_dir, num_shards)):
        for model_id in (0, 1):
            assert (store.train_commits(model_id, mode="r").counts() == 1).all(), f"shard {s} model {model_id}"
            assert (store.target_commits("targets", model_id, mode="r").counts() == 1).all(), f"shard {s}"
        assert (store.tile_commits("targets", store._score_grid("targets"), mode="r").counts() == 1).all()
        assert store.experiment("targets")["scores"]["complete"]


def assert_scores(scores, reference) -> None:
    assert scores.shape == reference.shape == (N_TRAIN, N_TARGETS)
    error = np.abs(scores - reference).max() / np.abs(reference).max()
    assert error < RTOL, f"max |Δ| / max |score| = {error:.2e}"  # RTOL: derived in test_trak_distributed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted scores: one process, no torch.distributed."""
    return run_pipeline(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def featurized_by_two_ranks(tmp_path_factory):
    """A store that 2 ranks featurized concurrently (both checkpoints), uninterrupted."""
    save_dir = tmp_path_factory.mktemp("featurized") / "store"
    done = torchrun(2, save_dir, save_dir.parent / "unused.npy", "--stop-after", "featurize")
    assert done.returncode == 0, log(done)
    return save_dir


# ---- 1. resume per rank --------------------------------------------------------------------------


def test_rank_killed_mid_featurize_resumes_with_the_same_ranks(tmp_path, reference):
    save_dir = tmp_path / "store"
    # Rank 1 dies after its 20th batch: checkpoint 0 done (15 batches), 5 of checkpoint 1's.
    killed(2, save_dir, rank=1, at="featurize", after=BATCHES + 5)
    verify(save_dir, 2)  # a killed rank (and its peer, stopped by torchrun) leave verifiable shards
    shard1 = shard_stores(save_dir, 2)[1]
    assert shard1.train_commits(0, mode="r").num_done() == N_TRAIN // 2
    assert shard1.train_commits(1, mode="r").num_done() == 5 * BATCH // 2  # 2 of each batch's 4 rows

    assert_scores(finished(2, save_dir, tmp_path / "scores.npy"), reference)
    verify(save_dir, 2)
    assert_committed_once(save_dir, 2)


def test_rank_killed_mid_score_tiles_resumes_on_more_ranks(tmp_path, reference):
    """Killed in finalize_scores after 4 of its shard's 15 tiles; relaunched with 3 ranks (rank 2
    owns no shard of the 2-shard store) it finishes without scoring a tile twice."""
    save_dir = tmp_path / "store"
    killed(2, save_dir, rank=1, at="tile", after=4)
    verify(save_dir, 2)
    shard1 = shard_stores(save_dir, 2)[1]
    assert shard1.tile_commits("targets", shard1._score_grid("targets"), mode="r").num_done() == 4
    assert not shard1.experiment("targets")["scores"]["complete"]

    assert_scores(finished(3, save_dir, tmp_path / "scores.npy"), reference)
    assert not (save_dir / "shards" / "2-of-3").exists(), "the store keeps its 2 shards"
    verify(save_dir, 2)
    assert_committed_once(save_dir, 2)


def test_rank_killed_mid_target_batches_one_process_takes_over(tmp_path, reference):
    """Killed after 2 of checkpoint 0's 3 target batches; one process (no torch.distributed)
    then owns both shards and finishes the job."""
    save_dir = tmp_path / "store"
    killed(2, save_dir, rank=1, at="score", after=2)
    verify(save_dir, 2)
    shard1 = shard_stores(save_dir, 2)[1]
    assert shard1.target_commits("targets", 0, mode="r").num_done() == 2 * BATCH
    assert shard1.model(1)["finalized"]

    assert_scores(run_pipeline(save_dir), reference)
    verify(save_dir, 2)
    assert_committed_once(save_dir, 2)


def rows_computed(prefix) -> dict[int, int]:
    """Rows computed per checkpoint over every launch and rank that logged to ``prefix`` (see count_rows)."""
    total = {}
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().split("\n"):
            if line:
                model_id, computed = map(int, line.split())
                total[model_id] = total.get(model_id, 0) + computed
    return total


def inbox_counts(save_dir, num_shards: int, model_id: int) -> list[np.ndarray]:
    """The train commit counts of checkpoint ``model_id`` in every inbox of every shard."""
    counts = []
    for path in sorted(save_dir.glob(f"shards/*-of-{num_shards}/inbox/*")):
        try:
            counts.append(trak_core.Store.open(path).train_commits(model_id, mode="r").counts())
        except FileNotFoundError:  # nothing of this checkpoint went through that inbox
            pass
    return counts


def rows_committed(save_dir, num_shards: int) -> dict[int, int]:
    """Rows committed per checkpoint, in the shards and their inboxes."""
    return {
        model_id: sum(int(s.train_commits(model_id, mode="r").num_done()) for s in shard_stores(save_dir, num_shards))
        + sum(int(np.count_nonzero(c)) for c in inbox_counts(save_dir, num_shards, model_id))
        for model_id in (0, 1)
    }


@pytest.mark.parametrize("first, then", [(3, 2), (2, 3)], ids=["3-then-2-ranks", "2-then-3-ranks"])
def test_sampler_shares_resume_on_another_number_of_ranks(tmp_path, reference, first, then):
    """Each rank fed its DistributedSampler(shuffle=False) share: ``first`` ranks featurize until
    rank 1 is killed (checkpoint 0 done, 2 batches of checkpoint 1), then ``then`` ranks, fed
    their shares of the new world, finish.  A rank of the new job computes rows of shards it does
    not own; they go through its inboxes into the owning shard: the same scores, every row
    computed once over both launches (the rows the first job committed plus those the second
    computed: a count, since torchrun may stop a peer of the killed rank between a commit and any
    log line), every shard row committed once."""
    save_dir, prefix = tmp_path / "store", tmp_path / "computed"
    per_rank = -(-N_TRAIN // first // BATCH)  # featurize calls per checkpoint and rank (the last one short)
    killed(first, save_dir, 1, "featurize", per_rank + 2, "--feed", "sampler")
    verify(save_dir, first)
    assert shard_stores(save_dir, first)[1].train_commits(1, mode="r").num_done() == 2 * BATCH
    committed = rows_committed(save_dir, first)

    scores = finished(then, save_dir, tmp_path / "scores.npy", "--feed", "sampler", "--count-rows", str(prefix))
    assert_scores(scores, reference)
    verify(save_dir, first)
    assert_committed_once(save_dir, first)
    computed = rows_computed(prefix)
    assert {m: committed[m] + computed.get(m, 0) for m in (0, 1)} == {0: N_TRAIN, 1: N_TRAIN}, (committed, computed)
    inboxes = inbox_counts(save_dir, first, 1)
    assert inboxes and all(((counts == 1) | (counts == 0)).all() for counts in inboxes)
    assert sum(int(counts.sum()) for counts in inboxes) > 0, "rows of other ranks' shards went through inboxes"


def assert_one_solve(save_dir, num_shards: int) -> None:
    """Every shard of each checkpoint finalized with the same λ and XᵀX (nothing mixed from two solves)."""
    for model_id in (0, 1):
        records = [store.model(model_id) for store in shard_stores(save_dir, num_shards)]
        assert all(r["finalized"] for r in records), model_id
        assert len({(r["lambda"], r["xtx_trace"], r["solver"]) for r in records}) == 1, records


@pytest.mark.parametrize(
    "at, then",
    [("xtx", 2), ("finalized", 3)],
    ids=["at-checkpoint-1-xtx-same-ranks", "features-written-not-recorded-3-ranks"],
)
def test_rank_killed_in_finalize_features_resumes(tmp_path, reference, at, then):
    """Rank 1 SIGKILLed in finalize_features of checkpoint 1 (its 2nd shard pass), either as its
    XᵀX pass starts or once its shard's features are written but not recorded as finalized (rank
    0 may have finished its shard by then: a store finalized on one shard only); relaunched, the
    unfinished shards are finalized again from the same XᵀX, summed in shard order: one λ for all
    shards and the uninterrupted scores."""
    save_dir = tmp_path / "store"
    killed(2, save_dir, rank=1, at=at, after=2)
    verify(save_dir, 2)
    shard0, shard1 = shard_stores(save_dir, 2)
    assert shard1.model(0)["finalized"] and not shard1.model(1)["finalized"]
    assert (shard1.train_commits(1, mode="r").counts() == 1).all()

    assert_scores(finished(then, save_dir, tmp_path / "scores.npy"), reference)
    verify(save_dir, 2)
    assert_committed_once(save_dir, 2)
    assert_one_solve(save_dir, 2)


def test_rank_killed_while_merging_inboxes_resumes(tmp_path, reference):
    """3 ranks featurize their sampler shares until rank 1 is killed (2 batches into checkpoint
    1); 2 ranks take over, rank 0 computing the missing rows of shard 1 into its inbox, and rank 1
    (shard 1's owner) is SIGKILLed in finalize_features right after merging that inbox; the
    relaunch finds those rows committed, copies nothing twice and finishes."""
    save_dir = tmp_path / "store"
    killed(3, save_dir, 1, "featurize", N_TRAIN // 3 // BATCH + 2, "--feed", "sampler")
    killed(2, save_dir, 1, "merge", 1, "--feed", "sampler")
    assert inbox_counts(save_dir, 3, 1), "rank 0 featurized rows of shard 1 into an inbox"
    assert shard_stores(save_dir, 3)[1].train_commits(1, mode="r").all_done(), "merged before the kill"

    assert_scores(finished(2, save_dir, tmp_path / "scores.npy", "--feed", "sampler"), reference)
    verify(save_dir, 3)
    assert_committed_once(save_dir, 3)
    assert_one_solve(save_dir, 3)


# ---- 2. one writer per shard ---------------------------------------------------------------------


def test_concurrent_ranks_leave_every_shard_verifiable(featurized_by_two_ranks):
    verify(featurized_by_two_ranks, 2)
    for store in shard_stores(featurized_by_two_ranks, 2):
        for model_id in (0, 1):
            assert (store.train_commits(model_id, mode="r").counts() == 1).all()


@pytest.mark.parametrize("fresh", [False, True], ids=["resume", "load_from_save_dir=False"])
def test_a_second_job_on_a_save_dir_in_use_is_refused_and_changes_nothing(
    tmp_path, featurized_by_two_ranks, reference, fresh
):
    """One process holds both shards (it believes it owns them); a 2-rank job on the same
    save_dir, even one told to start over, gets the one-writer error naming that process on
    every rank, and the holder's data stays intact: it finishes with the uninterrupted scores."""
    save_dir = tmp_path / "store"
    shutil.copytree(featurized_by_two_ranks, save_dir)
    before = [store.train_grads(1, mode="r").copy() for store in shard_stores(save_dir, 2)]
    holder = trak_core.TRAKer(make_problem()[0], "classification", N_TRAIN, save_dir=save_dir, quiet=True, **SETTINGS)
    try:
        assert sorted(holder.shards) == [0, 1]
        options = ("--open-only", "--fresh") if fresh else ("--open-only",)
        done = torchrun(2, save_dir, tmp_path / "unused.npy", *options)
        assert done.returncode != 0, "a second writer was let in: " + log(done)
        holder_pid = f"pid {os.getpid()}"
        if fresh:
            # Rank 0 could not clear the shards; rank 1 stops through the collective check
            # instead of going on to write its shard while rank 0 is gone.
            assert f"rank 0: StoreLockedError: the store in {save_dir.resolve()}/shards/" in done.stderr, log(done)
            assert "rank 1: StoreError: another rank could not open" in done.stderr, log(done)
        else:
            for rank in (0, 1):
                assert f"rank {rank}: StoreLockedError: the store in {save_dir.resolve()}/shards/{rank}-of-2" in (
                    done.stderr
                ), log(done)
        assert holder_pid in done.stderr, log(done)
        assert (save_dir / "shards.json").exists()
        verify(save_dir, 2)
        after = [store.train_grads(1, mode="r") for store in shard_stores(save_dir, 2)]
        for old, new in zip(before, after, strict=True):
            np.testing.assert_array_equal(old, new)
    finally:
        holder.close()
    assert_scores(run_pipeline(save_dir), reference)  # resumes: nothing was featurized again
    assert_committed_once(save_dir, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("save_dir")
    parser.add_argument("out")
    parser.add_argument("--stop-after", choices=("featurize",))
    parser.add_argument("--kill-rank", type=int)
    parser.add_argument("--kill-at", choices=("featurize", "score", "tile", "xtx", "finalized", "merge"))
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--open-only", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--feed", choices=("all", "sampler"), default="all")
    parser.add_argument("--count-rows", metavar="PREFIX")
    args = parser.parse_args()
    if args.open_only:
        open_only(args.save_dir, args.fresh)
        return
    if args.count_rows is not None:
        count_rows(args.count_rows)
    if args.kill_at is not None:
        install_kill(args.kill_rank, args.kill_at, args.kill_after)
    from .test_trak_distributed import worker

    worker(args.save_dir, args.out, args.feed, args.stop_after)


if __name__ == "__main__":
    main()

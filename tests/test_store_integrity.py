"""Store integrity (issue 16, items 1-4, 6, 7): one writer, verified files, honest errors, full disks.

Every test here failed on the code at 0e7266e: there the faults went through silently (exit 0,
zero-filled files, wrong scores) or raised raw errors that named no file.

This file is also a worker: ``python -m tests.test_store_integrity hold SAVE_DIR`` opens a TRAKer on
SAVE_DIR, prints ``ready`` and sleeps until it is killed.
"""

import errno
import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import trak_core
from trak_core import atomic_files
from trak_core.atomic_files import open_npy

from .test_trak_exact import N_TARGETS, N_TRAIN, make_problem, run_traker

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(proj_dim=32)


def traker_for(save_dir, **overrides):
    model = make_problem()[0]
    return trak_core.TRAKer(
        model, "classification", N_TRAIN, save_dir=save_dir, quiet=True, **{**SETTINGS, **overrides}
    )


def featurize_part(save_dir, rows=16, **overrides):
    """Checkpoint 0 featurized up to ``rows`` (of N_TRAIN), then the TRAKer is closed."""
    _, checkpoints, train, _ = make_problem()
    traker = traker_for(save_dir, **overrides)
    traker.load_checkpoint(checkpoints[0], 0)
    traker.featurize((train[0][:rows], train[1][:rows]), num_samples=rows)
    traker.close()


def full_run(save_dir, **overrides):
    model, checkpoints, train, targets = make_problem()
    scores, traker = run_traker(save_dir, model, checkpoints, train, targets, **{**SETTINGS, **overrides})
    traker.close()
    return scores


def finish(save_dir):
    """Reruns the whole pipeline on ``save_dir`` (resuming) and returns the scores."""
    return full_run(save_dir)


# ---- 1. one writer per save_dir ----------------------------------------------------------------


def hold(save_dir):
    traker = traker_for(save_dir)  # holds the lock while it lives
    print("ready", flush=True)
    time.sleep(120)
    traker.close()


def start_holder(save_dir):
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.test_store_integrity", "hold", str(save_dir)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    line = worker.stdout.readline().decode()
    assert line.strip() == "ready", line + worker.stdout.read().decode()[-2000:]
    return worker


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    worker = start_holder(tmp_path)
    try:
        with pytest.raises(trak_core.StoreLockedError) as info:
            traker_for(tmp_path)
        message = str(info.value)
        assert f"pid {worker.pid}" in message and str(tmp_path) in message and "another save_dir" in message
        # Inspection does not need the lock, and cannot write.
        store = trak_core.Store.open(tmp_path)
        with pytest.raises(trak_core.StoreError, match="read-only"):
            store.save()
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    # SIGKILL released the lock: the store opens, and runs to the end.
    np.testing.assert_allclose(finish(tmp_path), full_run(tmp_path / "reference"), rtol=1e-5, atol=1e-7)


def test_the_lock_is_released_by_close_and_shared_within_a_process(tmp_path):
    first = traker_for(tmp_path)
    second = traker_for(tmp_path)  # a notebook rebuilding its TRAKer: same process, allowed
    first.close()
    assert second.store._lock.held()
    second.close()
    # Nobody holds it now: another process can take it.
    worker = start_holder(tmp_path)
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def test_a_forked_child_does_not_inherit_the_lock(tmp_path):
    """DataLoader workers and other forks of a writer can neither write its store nor open it."""
    traker = traker_for(tmp_path)
    results = multiprocessing.get_context("fork").SimpleQueue()

    def child():
        for attempt in (traker.store.save, lambda: trak_core.Store(tmp_path, traker.store.settings)):
            try:
                attempt()
                results.put("wrote")
            except trak_core.StoreError as error:
                results.put(type(error).__name__ + ": " + str(error))

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    inherited, reopened = results.get(), results.get()
    assert inherited.startswith("StoreError") and "inherited through fork" in inherited
    assert reopened.startswith("StoreLockedError") and f"pid {os.getpid()}" in reopened
    # The child's exit did not release the parent's lock.
    assert traker.store._lock.held()
    fd = os.open(tmp_path / "writer.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    traker.store.save()
    traker.close()


def test_temporary_files_of_a_killed_creation_are_removed(tmp_path):
    featurize_part(tmp_path)
    stale = tmp_path / "models" / "0" / ".grads.npy.k1ll3d.tmp"
    stale.write_bytes(bytes(1000))
    traker_for(tmp_path).close()
    assert not stale.exists()


def test_creating_a_file_never_replaces_an_existing_one(tmp_path, monkeypatch):
    """The exists() check and the creation are not atomic: a file that appears in between is kept."""
    path = tmp_path / "x.npy"
    array = open_npy(path, (3, 4), np.float32)
    array[:] = 7.0
    array.flush()
    exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self.name == "x.npy" else exists(self))
    again = open_npy(path, (3, 4), np.float32)
    assert (np.asarray(again) == 7.0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# ---- 2. a truncated .npy is an error, never zero-extended ------------------------------------------


@pytest.mark.parametrize("name", ["grads.npy", "out_to_loss.npy"])
def test_a_truncated_array_of_a_checkpoint_being_featurized_is_refused(tmp_path, name):
    featurize_part(tmp_path, rows=16)
    path = tmp_path / "models" / "0" / name
    size = path.stat().st_size
    os.truncate(path, size - (size - 128) // 2)  # committed rows cut off
    _, checkpoints, _, _ = make_problem()
    traker = traker_for(tmp_path)
    with pytest.raises(trak_core.StoreDamagedError) as info:
        traker.load_checkpoint(checkpoints[0], 0)
    message = str(info.value)
    assert str(path) in message and "truncated" in message and "forget_checkpoint" in message
    assert path.stat().st_size < size  # not repaired with zeros
    traker.close()
    # The advice works: forget the checkpoint, rerun, get the scores of a clean run.
    trak_core.Store.forget_checkpoint(tmp_path, 0)
    np.testing.assert_allclose(finish(tmp_path), full_run(tmp_path / "reference"), rtol=1e-5, atol=1e-7)


def test_a_truncated_finished_array_is_refused_when_read(tmp_path):
    full_run(tmp_path)
    path = tmp_path / "models" / "1" / "out_to_loss.npy"
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(trak_core.StoreDamagedError, match="out_to_loss.npy is truncated"):
        trak_core.Store.open(tmp_path).out_to_loss(1, mode="r")


# ---- 3. a deleted committed file is an error, never a fresh zero file ------------------------------


def scored_but_not_finalized(save_dir):
    model, checkpoints, train, targets = make_problem()
    traker = traker_for(save_dir)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        traker.featurize(train, num_samples=N_TRAIN)
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("exact", ckpt, model_id, N_TARGETS)
        traker.score(targets, num_samples=N_TARGETS)
    traker.close()


def finalize_scores(traker, checkpoints):
    traker.finalize_scores("exact")


def featurize_again(traker, checkpoints):
    traker.load_checkpoint(checkpoints[0], 0)


@pytest.mark.parametrize(
    "relative, read, use",
    [
        ("models/0/out_to_loss.npy", lambda store: store.out_to_loss(0, mode="r"), finalize_scores),
        ("models/1/features.npy", lambda store: store.features(1, mode="r"), finalize_scores),
        ("experiments/exact/0/grads.npy", lambda store: store.target_grads("exact", 0, mode="r"), finalize_scores),
        ("models/0/featurized.npy", lambda store: store.train_commits(0, mode="r"), featurize_again),
    ],
)
def test_a_deleted_committed_array_is_an_error_not_zeros(tmp_path, relative, read, use):
    scored_but_not_finalized(tmp_path)
    path = tmp_path / relative
    path.unlink()
    with pytest.raises(trak_core.StoreMissingFileError, match=f"{path} is missing"):
        read(trak_core.Store.open(tmp_path))
    traker = traker_for(tmp_path)
    with pytest.raises(trak_core.StoreMissingFileError, match=f"{path} is missing") as info:
        use(traker, make_problem()[1])
    assert "forget_" in str(info.value)  # says what to do
    assert not path.exists()  # not recreated (read-only or not)


def test_a_deleted_finished_scores_file_is_an_error(tmp_path):
    full_run(tmp_path)
    path = tmp_path / "experiments" / "exact" / "scores.npy"
    path.unlink()
    with pytest.raises(trak_core.StoreMissingFileError, match="scores of experiment 'exact' as complete"):
        trak_core.Store.open(tmp_path).scores("exact", mode="r")
    traker = traker_for(tmp_path)
    with pytest.raises(trak_core.StoreMissingFileError, match=str(path)):
        traker.finalize_scores("exact")
    assert not path.exists()
    traker.close()
    trak_core.Store.forget_experiment(tmp_path, "exact")
    np.testing.assert_allclose(finish(tmp_path), full_run(tmp_path / "reference"), rtol=1e-5, atol=1e-7)


def test_scores_restarted_for_other_checkpoints_and_killed_recompute_cleanly(tmp_path):
    """finalize_scores with another checkpoint set deletes the tiles first: a kill right after is no damage."""
    reference = full_run(tmp_path)
    traker = traker_for(tmp_path)
    traker.store.delete_tiles("exact")  # ... and killed before recording the new checkpoint set
    traker.close()
    traker = traker_for(tmp_path)
    np.testing.assert_array_equal(traker.finalize_scores("exact"), reference)
    traker.close()


# ---- 4. a deleted metadata.json does not bypass the settings check ---------------------------------


def test_data_without_metadata_is_refused(tmp_path):
    featurize_part(tmp_path, rows=16, projector_seed=0)
    (tmp_path / "metadata.json").unlink()
    with pytest.raises(trak_core.StoreMissingFileError) as info:
        traker_for(tmp_path, projector_seed=1)  # would reuse the seed-0 rows on the old code
    message = str(info.value)
    assert "no metadata.json" in message and "models/0/" in message and "load_from_save_dir=False" in message
    # Starting over as advised works.
    traker_for(tmp_path, projector_seed=1, load_from_save_dir=False).close()
    assert not (tmp_path / "models").exists()


# ---- 6. a full disk is a clear OSError, and a rerun after freeing space resumes -------------------


def test_a_full_disk_is_a_clear_error_and_the_rerun_resumes(tmp_path, monkeypatch):
    model, checkpoints, train, _ = make_problem()
    traker = traker_for(tmp_path)
    traker.load_checkpoint(checkpoints[0], 0)
    traker.featurize(train, num_samples=N_TRAIN)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError) as info:
        traker.load_checkpoint(checkpoints[1], 1)
    error = info.value
    assert isinstance(error, trak_core.StoreDiskFullError) and error.errno == errno.ENOSPC
    assert str(tmp_path / "models" / "1") in str(error) and "bytes" in str(error) and "run the same code" in str(error)
    # Nothing half-made is left: no partial array, no temporary file.
    assert sorted(p.name for p in (tmp_path / "models" / "1").iterdir()) == []
    traker.close()

    monkeypatch.undo()  # space freed
    np.testing.assert_allclose(finish(tmp_path), full_run(tmp_path / "reference"), rtol=1e-5, atol=1e-7)
    assert trak_core.Store.open(tmp_path).train_commits(0, mode="r").counts().tolist() == [1] * N_TRAIN


def test_arrays_are_allocated_without_fallocate_too(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    monkeypatch.setattr(atomic_files, "_ZERO_CHUNK", 1000)  # several chunks
    array = open_npy(tmp_path / "x.npy", (1000, 3), np.float32)
    assert array.shape == (1000, 3) and not array.any()
    assert os.stat(tmp_path / "x.npy").st_blocks * 512 >= 12000  # really allocated, not sparse

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(trak_core.StoreDiskFullError, match=r"y\.npy: 12128 bytes"):
        open_npy(tmp_path / "y.npy", (1000, 3), np.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


# ---- 7. damaged metadata and headers name the file and say what to do ------------------------------


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: "", "not valid JSON"),
        (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "models"}), "'models'"),
        (lambda text: text.replace('"train_set_size"', '"train_set_sizes"'), "settings"),
    ],
)
def test_damaged_metadata_names_the_file(tmp_path, damage, what):
    featurize_part(tmp_path)
    path = tmp_path / "metadata.json"
    path.write_text(damage(path.read_text()))
    for open_it in (lambda: traker_for(tmp_path), lambda: trak_core.Store.open(tmp_path)):
        with pytest.raises(trak_core.StoreDamagedError) as info:
            open_it()
        message = str(info.value)
        assert f"{path} is damaged" in message and what in message and "load_from_save_dir=False" in message


def test_a_damaged_npy_header_names_the_file(tmp_path):
    featurize_part(tmp_path)
    path = tmp_path / "models" / "0" / "grads.npy"
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"{'descr': garbage")
    _, checkpoints, _, _ = make_problem()
    traker = traker_for(tmp_path)
    with pytest.raises(trak_core.StoreDamagedError) as info:
        traker.load_checkpoint(checkpoints[0], 0)
    assert f"{path}: the .npy header is damaged" in str(info.value) and "forget_checkpoint" in str(info.value)
    assert isinstance(info.value, trak_core.StoreError)


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        hold(sys.argv[2])

"""Rows featurized by a rank that does not own their shard: per-rank inboxes, merged by the owner.

Rank ``r`` of a ``W``-rank job computes the train rows ``i ≡ r (mod W)``: exactly the rows a
``DistributedSampler(shuffle=False)`` feeds it, and one ``W``-th of them when every rank is fed
everything.  When ``W`` equals the store's shard count ``S`` those rows form shard ``r``; after a
relaunch with another ``W`` some of them belong to shards other ranks own.  Such a row is written
to an inbox, never into the other rank's shard::

    shards/<s>-of-<S>/inbox/<c>-of-<L>/   an ordinary Store of the rows i ≡ c (mod L), local row i // L,
                                          L = lcm(S, W), c ≡ s (mod S): written by rank c % W alone

Each inbox has one writer (its own lock); the shard's owner only reads it, after the barrier that
starts ``finalize_features``, and copies the rows its shard lacks (data first, then the commit:
a kill half-way only repeats the copy).  Inboxes of earlier jobs (another ``L``) are read the
same way, so no committed row is lost or computed again whatever the sequence of relaunches.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .linalg import row_blocks
from .settings import StoreMismatchError, StoreSettings
from .shards import ShardLayout
from .store import METADATA, Store

_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def classes(layout: ShardLayout, rank: int, world: int) -> tuple[int, list[int]]:
    """``(L, the residue classes c mod L of the rows rank computes)``: ``c ≡ rank (mod world)``."""
    period = math.lcm(layout.num_shards, world)
    return period, list(range(rank, period, world))


def directory(root, layout: ShardLayout, c: int, period: int) -> Path:
    return layout.directory(root, c % layout.num_shards) / "inbox" / f"{c}-of-{period}"


def settings_of(layout: ShardLayout, settings: StoreSettings, c: int, period: int) -> StoreSettings:
    return ShardLayout(layout.n, period).shard_settings(settings, c)


def open_inbox(root, layout: ShardLayout, settings: StoreSettings, c: int, period: int) -> Store:
    """The writable inbox of class ``c`` mod ``period`` (takes its writer lock)."""
    return Store(directory(root, layout, c, period), settings_of(layout, settings, c, period))


def inboxes(root, layout: ShardLayout, shard: int):
    """``(c, L, read-only Store)`` of every inbox of ``shard`` (only those with metadata: an
    inbox killed before its metadata was written holds no committed row)."""
    folder = layout.directory(root, shard) / "inbox"
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = _NAME.match(path.name)
        if match and (path / METADATA).exists():
            yield int(match.group(1)), int(match.group(2)), Store.open(path)


def _committed(inbox: Store, model_id: int, fingerprint: str, expected: StoreSettings):
    """The commit counts of ``model_id`` in ``inbox`` (None: nothing there), after checking the
    inbox holds rows of the ``expected`` settings and the same checkpoint weights (never mixed
    silently)."""
    problems = expected.mismatches(inbox.settings)
    record = inbox.model(model_id)
    if not problems and record is not None and record["fingerprint"] != fingerprint:
        problems = [f"model_id {model_id} was featurized there from a checkpoint with other weights"]
    if problems:
        raise StoreMismatchError(
            f"the inbox {inbox.root} does not match this store: {'; '.join(problems)}. Delete that folder "
            "(its rows are featurized again) or relaunch with the settings and checkpoints it was made with"
        )
    try:
        return inbox.train_commits(model_id, mode="r")
    except FileNotFoundError:
        return None


def done_in_inboxes(root, layout: ShardLayout, settings: StoreSettings, shard: int, model_id: int, fingerprint: str):
    """Boolean mask over the local rows of ``shard``: committed for ``model_id`` in some inbox."""
    done = np.zeros(layout.size(shard), dtype=bool)
    for c, period, inbox in inboxes(root, layout, shard):
        commits = _committed(inbox, model_id, fingerprint, settings_of(layout, settings, c, period))
        if commits is not None:
            local = np.flatnonzero(commits.done())
            done[layout.local(ShardLayout(layout.n, period).global_rows(c, local))] = True
    return done


def merge(root, layout: ShardLayout, settings: StoreSettings, shard: Store, s: int, model_id: int) -> int:
    """Copies into ``shard`` (the writable store of shard ``s``) the rows of ``model_id`` that
    its inboxes hold and it lacks; returns how many.  Call when nobody writes the inboxes."""
    fingerprint = shard.model(model_id)["fingerprint"]
    commits = shard.train_commits(model_id)
    copied = 0
    for c, period, inbox in inboxes(root, layout, s):
        theirs = _committed(inbox, model_id, fingerprint, settings_of(layout, settings, c, period))
        if theirs is None:
            continue
        source = np.flatnonzero(theirs.done())
        target = layout.local(ShardLayout(layout.n, period).global_rows(c, source))
        wanted = ~commits.done(target)
        source, target = source[wanted], target[wanted]
        if not len(source):
            continue
        grads, q = shard.train_grads(model_id), shard.out_to_loss(model_id)
        their_grads, their_q = inbox.train_grads(model_id, mode="r"), inbox.out_to_loss(model_id, mode="r")
        for start, stop in row_blocks(len(source), 4096):  # bounded memory
            rows, into = source[start:stop], target[start:stop]
            grads[into] = their_grads[rows]
            q[into] = their_q[rows]
            grads.flush()
            q.flush()
            commits.commit(into)  # data first, then the commit
        copied += len(source)
    return copied

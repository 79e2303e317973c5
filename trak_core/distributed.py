"""The few ``torch.distributed`` calls trak_core makes; without a process group, one rank of one.

Any backend works (gloo on CPUs, nccl on GPUs): tensors that cross ranks are moved to
``device`` first, which must be a CUDA device under nccl.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

# Set to "0" when a script runs torch.distributed for its own reasons (e.g. DDP training) but
# uses trak_core in one process only (say, rank 0): trak_core then ignores the process group.
# Otherwise every rank must make the same trak_core calls, or the others wait at a barrier.
OPT_OUT_ENV = "TRAK_CORE_DISTRIBUTED"


def active() -> bool:
    """True when a ``torch.distributed`` process group is initialized in this process (and
    ``TRAK_CORE_DISTRIBUTED=0`` does not tell trak_core to ignore it)."""
    if os.environ.get(OPT_OUT_ENV, "1") == "0":
        return False
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if not active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if active():
        dist.barrier()


def any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is True on some rank (so all ranks take the same branch)."""
    if not active():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_in_shard_order(partials: dict[int, torch.Tensor], owner, num_shards: int, like: torch.Tensor) -> torch.Tensor:
    """``Σ_s partials[s]`` for ``s = 0 … num_shards-1``, added in that order on every rank.

    Args:
        partials: the partial sums of the shards this rank owns (shard -> tensor).
        owner: ``owner(s)`` is the rank holding shard ``s``'s partial.
        num_shards: S.
        like: a tensor of the partials' shape, dtype and device (the receive buffer's template).
    Returns:
        The same bits on every rank, for any number of ranks: the additions happen in shard
        order, never in the order ranks answer (which is what ``all_reduce`` would give).
    """
    total = torch.zeros_like(like)
    for shard in range(num_shards):
        if shard in partials:
            part = partials[shard].to(device=like.device, dtype=like.dtype)
        else:
            part = torch.empty_like(like)
        if active():
            dist.broadcast(part, src=owner(shard))
        elif shard not in partials:
            raise RuntimeError(f"shard {shard} has no partial sum and there is no other rank to provide it")
        total += part
    return total

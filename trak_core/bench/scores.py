"""``python -m trak_core.bench.scores``: throughput and peak memory of tiled scoring (synthetic features).

Builds a store with one finalized checkpoint of random features (n, K), random target gradients
(t, K) and Q, then runs trak_core's scorer (``scoring.finalize_scores``), which writes the (n, t)
scores to disk tile by tile.  Memory is bounded by the tile shape plus two length-n vectors (Q),
not by n·t: the report gives an estimate from the tile shape (tiles and the length-n Q
vectors, no allocator or library overhead) next to the measured peak.

``--max-tiles m`` computes only the first m tiles (the rest are recorded as done beforehand, so
the scorer skips them): the full ``scores-1m`` preset (2·10^6·5·10^4·2048 ≈ 2·10^17 flops, a
200 GB score file) is a GPU job, while a few of its tiles measure the per-tile rate and the peak
at the real shape anywhere.  Only the rows those tiles read are filled with random values.

Under ``torchrun`` (``torchrun --nproc_per_node=2 -m trak_core.bench.scores ...``; gloo, or nccl
with ``--device cuda``) each rank scores its shard of the train rows (``i ≡ rank (mod W)``, as a
sharded store does) in a store of its own, ``--max-tiles`` per rank; rank 0 reports every rank's
time and peak memory, and ``--save`` writes one JSON with all ranks (``...-<W>ranks.json``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fastjl.bench.results import save_json

from .. import distributed
from ..scoring import finalize_scores
from ..settings import StoreSettings
from ..shards import ShardLayout
from ..store import Store

PRESETS = {
    "scores-1m": dict(train=1_000_000, targets=50_000, proj_dim=2048, tile=(8192, 4096)),
    "scores-small": dict(train=3000, targets=500, proj_dim=64, tile=(512, 128)),  # the CI test's size
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m trak_core.bench.scores", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="scores-small")
    p.add_argument("--train", type=int, help="n (overrides the preset)")
    p.add_argument("--targets", type=int, help="t (overrides the preset)")
    p.add_argument("--proj-dim", type=int, help="K (overrides the preset)")
    p.add_argument("--tile", type=int, nargs=2, metavar=("ROWS", "COLS"), help="score tile (overrides the preset)")
    p.add_argument("--max-tiles", type=int, help="compute only the first m tiles (column-major order)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dir", help="where the synthetic store goes (default: a temporary folder, removed)")
    p.add_argument("--save", nargs="?", const="bench/results", help="write JSON into this folder")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.train = args.train or preset["train"]
    args.targets = args.targets or preset["targets"]
    args.proj_dim = args.proj_dim or preset["proj_dim"]
    args.tile = tuple(args.tile or preset["tile"])
    return args


class AnonymousPeak:
    """Samples the process's anonymous resident memory (``RssAnon``, Linux) every few ms.

    Memmapped store pages are file-backed (the kernel writes them back and drops them), so they
    are left out: what this measures is the memory scoring itself holds.  A sampler can miss a
    peak shorter than its period; the tiles live for far longer."""

    def __init__(self, period_s: float = 0.002):
        self.period_s, self.peak_kib, self._stop = period_s, 0, threading.Event()

    @staticmethod
    def now_kib() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def __enter__(self):
        self.base_kib = self.peak_kib = self.now_kib()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.now_kib())
            time.sleep(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())

    @property
    def extra_mib(self) -> float:
        return (self.peak_kib - self.base_kib) / 1024


def synthetic_store(root: Path, n: int, t: int, k: int, rows_needed: int, cols_needed: int, seed: int = 0) -> Store:
    """A store with checkpoint 0 finalized: random features, target gradients and Q (the first
    ``rows_needed`` / ``cols_needed`` rows; the rest stay zero)."""
    settings = StoreSettings(n, k, "synthetic", None, None, "float32", "float64", k, "synthetic", "synthetic", "0.0")
    store = Store(root, settings, fresh=True)
    store.register_model(0, "synthetic")
    rng = np.random.default_rng(seed)
    for array, count in ((store.features(0), rows_needed), (store.out_to_loss(0), rows_needed)):
        for start in range(0, count, 65536):
            stop = min(start + 65536, count)
            array[start:stop] = rng.standard_normal((stop - start, *array.shape[1:]), dtype=np.float32)
        array.flush()
    store.update_model(0, featurized=True, finalized=True)
    store.init_experiment("bench", t)
    targets = store.target_grads("bench", 0)
    targets[:cols_needed] = rng.standard_normal((cols_needed, k), dtype=np.float32)
    targets.flush()
    store.target_commits("bench", 0).commit(np.arange(t))
    return store


def run(args) -> dict:
    rank, world = distributed.rank_and_world()
    n = ShardLayout(args.train, world).size(rank)  # this rank's shard of the train rows
    t, k, (tile_rows, tile_cols) = args.targets, args.proj_dim, args.tile
    grid = (math.ceil(n / tile_rows), math.ceil(t / tile_cols))
    total = grid[0] * grid[1]
    tiles = min(args.max_tiles or total, total)
    # Column-major order: the first m tiles cover rows 0 .. min(m, R)·rows and columns 0 .. ceil(m / R)·cols.
    rows_needed = min(n, min(tiles, grid[0]) * tile_rows)
    cols_needed = min(t, math.ceil(tiles / grid[0]) * tile_cols)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store = synthetic_store(Path(folder) / "store", n, t, k, rows_needed, cols_needed)
        store.update_experiment(
            "bench", scores={"model_ids": [0], "tile_shape": [tile_rows, tile_cols], "complete": False}
        )
        store.scores("bench")  # allocated up front, as the scorer would: tiles recorded done need their file
        commits = store.tile_commits("bench", grid)
        skipped = np.unravel_index(np.arange(tiles, total), grid, order="F")  # beyond the budget
        commits.commit(skipped)
        device = torch.device(args.device)
        start = time.perf_counter()
        with AnonymousPeak() as peak:
            scores = finalize_scores(store, "bench", [0], device=device, tile_shape=(tile_rows, tile_cols), quiet=True)
        seconds = time.perf_counter() - start
        check = check_first_tile(store, scores, tile_rows, tile_cols)
        store.close()
    tile_floats = (
        tile_rows * k + tile_cols * k + 2 * tile_rows * tile_cols
    )  # a feature block, targets, tile and product
    # plus Q: its float64 sum and mean and the float32 scale, each of length n
    estimate_mib = (4 * tile_floats + 20 * n) / 2**20
    computed = sum(
        min(tile_rows, n - i * tile_rows) * min(tile_cols, t - j * tile_cols) for i, j in first_tiles(grid, tiles)
    )
    return dict(
        preset=args.preset,
        rank=rank,
        ranks=world,
        train=n,
        targets=t,
        proj_dim=k,
        tile=[tile_rows, tile_cols],
        tiles_computed=tiles,
        tiles_total=total,
        seconds=seconds,
        scores_per_s=computed / seconds,
        gflop_per_s=2 * k * computed / seconds / 1e9,
        peak_anon_mib=peak.extra_mib,
        estimate_mib=estimate_mib,
        full_scores_mib=4 * n * t / 2**20,
        first_tile_max_rel_error=check,
        device=args.device if args.device != "cpu" else platform.processor() or "cpu",
        threads=torch.get_num_threads(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=dict(torch=torch.__version__, numpy=np.__version__, python=platform.python_version()),
    )


def first_tiles(grid, count):
    """``(i, j)`` of the first ``count`` tiles in the scorer's column-major order."""
    return [(index % grid[0], index // grid[0]) for index in range(count)]


def check_first_tile(store: Store, scores, tile_rows: int, tile_cols: int) -> float:
    """Max relative error of the first tile against float64 numpy: a benchmark of wrong scores is useless."""
    features = np.asarray(store.features(0, mode="r")[:tile_rows], dtype=np.float64)
    targets = np.asarray(store.target_grads("bench", 0, mode="r")[:tile_cols], dtype=np.float64)
    q = np.asarray(store.out_to_loss(0, mode="r")[:tile_rows], dtype=np.float64)
    expected = features @ targets.T * q[:, None]
    got = np.asarray(scores[:tile_rows, :tile_cols], dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def main(argv=None) -> dict:
    args = parse_args(argv)
    if "RANK" in os.environ and not dist.is_initialized():  # launched by torchrun
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    result = run(args)
    if not distributed.active():
        report(result, args.device)
        if args.save:
            save_json(args.save, f"{result['preset']}-{args.device}", result)
        return result
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, result)  # after every rank has finished: the slowest sets the pace
    if dist.get_rank() == 0:
        for each in results:
            report(each, args.device)
        seconds = max(r["seconds"] for r in results)
        computed = sum(r["scores_per_s"] * r["seconds"] for r in results)
        summary = dict(
            ranks=len(results),
            seconds=seconds,
            scores_per_s=computed / seconds,
            peak_anon_mib_per_rank=[r["peak_anon_mib"] for r in results],
            per_rank=results,
        )
        print(
            f"{len(results)} ranks: {computed / seconds:.3g} scores/s in all ({seconds:.2f} s, the slowest rank); "
            "peak anonymous memory per rank: " + ", ".join(f"+{r['peak_anon_mib']:.1f} MiB" for r in results),
            flush=True,
        )
        if args.save:
            path = save_json(args.save, f"{result['preset']}-{args.device}", summary)
            path.rename(path.with_name(f"{path.stem}-{len(results)}ranks.json"))
            print(f"renamed to {path.stem}-{len(results)}ranks.json")
    dist.destroy_process_group()
    return result


def report(result: dict, device: str) -> None:
    """One line: the shape, the rate, the peak memory and the check of the first tile."""
    who = f"rank {result['rank']} of {result['ranks']}: " if result["ranks"] > 1 else ""
    print(
        f"{who}{result['preset']}: n={result['train']} t={result['targets']} K={result['proj_dim']} "
        f"tile={result['tile']} "
        f"on {device} ({result['threads']} threads): {result['tiles_computed']}/{result['tiles_total']} tiles in "
        f"{result['seconds']:.2f} s, {result['scores_per_s']:.3g} scores/s, {result['gflop_per_s']:.1f} GFLOP/s; "
        f"peak anonymous memory +{result['peak_anon_mib']:.1f} MiB (tile-shape estimate "
        f"{result['estimate_mib']:.1f} MiB; all "
        f"scores would be {result['full_scores_mib']:.0f} MiB); first tile vs float64: "
        f"{result['first_tile_max_rel_error']:.1e}",
        flush=True,
    )


if __name__ == "__main__":
    main()

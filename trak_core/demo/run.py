"""The demo pipeline: train checkpoints, TRAK scores for several K and λ, LDS, figure, report."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fastjl.devices import device_problem

from ..attribute import attribute
from ..lds import linear_datamodeling_score
from ..progress import log_time
from ..regularization import DEFAULT_LAMBDA_SCALE
from ..store import Store
from .data import load_digits_split
from .figure import save_attribution_figure
from .models import DigitsMLP, accuracy, margins, state_dicts, train_ensemble


@dataclass
class DemoConfig:
    """Settings of a demo run (the defaults are the README's main command)."""

    n_train: int = 1000
    n_targets: int = 200
    checkpoints: int = 5
    subsets: int = 50
    retrains: int = 2
    hidden: int = 32
    steps: int = 300
    proj_dims: tuple[int, ...] = (256, 2048)
    compare_trak: bool = True
    kronecker: bool = True  # also score with proj_kind="kronecker" (default λ) at every K
    sparse: bool = True  # also score with proj_kind="sjlt" and "grass" (default λ) at every K
    sparsity: int = 1  # nonzeros per row of P for sjlt and grass (dattri's and the sjlt package's c = 1)
    grass_multiplier: int = 4  # GraSS keeps about grass_multiplier·K of the D coordinates (dattri's grass_4)
    lambda_scale: float = DEFAULT_LAMBDA_SCALE
    batch_size: int = 250
    device: str = "cpu"
    out_dir: str = "trak_demo_output"
    seed: int = 0
    quiet: bool = False
    log_level: int = logging.WARNING
    figure_targets: int = 4
    remove_stores: bool = False  # delete out_dir/stores at the end (they are only needed to inspect a run)


@dataclass
class ScoreRun:
    """One TRAK configuration and its LDS."""

    proj_dim: int
    kind: str
    lambda_rule: str
    lambda_mean: float
    lds: float
    lds_low: float
    lds_high: float
    seconds: float
    options: str = ""  # the sparse kinds' sparsity and mask rate, e.g. "s=1, mask_rate=0.425"


@dataclass
class DemoResult:
    config: DemoConfig
    num_params: int
    checkpoint_accuracy: float
    runs: list[ScoreRun] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    figure: str = ""
    figure_run: str = ""  # the run whose scores the figure shows
    stores: str = ""  # out_dir/stores: one TRAK store per run
    stores_bytes: int = 0  # their size on disk (before removal, if removed)
    stores_removed: bool = False


def run_demo(config: DemoConfig) -> DemoResult:
    """Runs the whole demo; returns the numbers it prints.

    Raises ValueError, before any work, when torch cannot use ``config.device``."""
    problem = device_problem(config.device)
    if problem is not None:
        raise ValueError(f"DemoConfig.device={config.device!r}: {problem}")
    start = time.perf_counter()
    out_dir = Path(config.out_dir)
    device = torch.device(config.device)
    timings: dict[str, float] = {}
    torch.manual_seed(config.seed)

    with log_time("load data", timings):
        data = load_digits_split(config.n_train, config.n_targets, config.seed).to(device)
    num_models = config.checkpoints + config.subsets * config.retrains
    with log_time(f"train {num_models} models ({config.checkpoints} checkpoints, the rest on random halves)", timings):
        generator = torch.Generator().manual_seed(config.seed + 1)
        subsets = (torch.rand(config.subsets, config.n_train, generator=generator) < 0.5).to(device)
        full = torch.ones(config.checkpoints, config.n_train, dtype=torch.bool, device=device)
        # One ensemble trains everything at once: checkpoints see all of the train set, the LDS
        # models (retrains x subsets) see their half only.
        masks = torch.cat([full, subsets.repeat(config.retrains, 1)])
        params = train_ensemble(
            data.x_train, data.y_train, masks, hidden=config.hidden, steps=config.steps, seed=config.seed + 2
        )
    checkpoint_params = [p[: config.checkpoints] for p in params]
    checkpoints = state_dicts(checkpoint_params, config.hidden)
    checkpoint_accuracy = accuracy(checkpoint_params, data.x_target, data.y_target).mean().item()
    # The LDS ground truth: margins of the retrained models on the targets, averaged over the
    # retrains of each subset (which removes part of the training noise).
    retrained = [p[config.checkpoints :] for p in params]
    outputs = margins(retrained, data.x_target, data.y_target)
    outputs = outputs.reshape(config.retrains, config.subsets, -1).mean(0).cpu().numpy()
    subsets = subsets.cpu().numpy()

    model = DigitsMLP(config.hidden).to(device)
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=config.batch_size)
    target_loader = DataLoader(TensorDataset(data.x_target, data.y_target), batch_size=config.batch_size)
    result = DemoResult(config, sum(p.numel() for p in model.parameters()), checkpoint_accuracy)
    figure_scores = None
    for proj_dim in config.proj_dims:
        variants = [("rademacher", None, {})] + [("rademacher", 0.0, {})] * config.compare_trak
        variants += [("kronecker", None, {})] * config.kronecker
        variants += sparse_variants(config, proj_dim, result.num_params) * config.sparse
        for kind, lambda_reg, kind_options in variants:
            rule = f"default ({config.lambda_scale:g}·mean‖φ‖²)" if lambda_reg is None else "0 (TRAK)"
            tag = "default" if lambda_reg is None else "lambda0"
            options = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in kind_options.items())
            label = f"{kind} ({options})" if options else kind
            name = f"TRAK K={proj_dim} {label} λ={'default' if lambda_reg is None else '0'}"
            store_dir = out_dir / "stores" / f"K{proj_dim}_{kind}_{tag}"
            with log_time(name, timings):
                scores = attribute(
                    model,
                    checkpoints,
                    train_loader,
                    target_loader,
                    proj_dim=proj_dim,
                    proj_kind=kind,
                    **kind_options,
                    lambda_reg=lambda_reg,
                    lambda_scale=config.lambda_scale,
                    save_dir=store_dir,
                    load_from_save_dir=False,  # the checkpoints were just retrained: start over
                    device=device,
                    quiet=config.quiet,
                    # λ = 0 at K >= n warns that XᵀX is singular: the demo shows that on purpose.
                    logging_level=config.log_level if lambda_reg is None else max(config.log_level, logging.ERROR),
                )
            lds = linear_datamodeling_score(scores, subsets, outputs, seed=config.seed)
            store = Store.open(store_dir)
            lambda_mean = float(np.mean([store.model(m)["lambda"] for m in store.model_ids()]))
            result.runs.append(
                ScoreRun(proj_dim, kind, rule, lambda_mean, lds.mean, lds.low, lds.high, timings[name], options)
            )
            if lambda_reg is None and kind == "rademacher":
                figure_scores = scores  # the last (largest) K with the default λ
                result.figure_run = (
                    f"K={proj_dim}, kind={kind}, λ = {rule} = {lambda_mean:.3g} (mean over checkpoints), "
                    f"{config.checkpoints} checkpoint{'' if config.checkpoints == 1 else 's'}"
                )

    with log_time("figure", timings):
        shown = _targets_of_distinct_classes(data.y_target.cpu().numpy(), config.figure_targets)
        result.figure = str(
            save_attribution_figure(
                out_dir / "trak_digits.png",
                figure_scores,
                data.x_train.cpu().numpy(),
                data.y_train.cpu().numpy(),
                data.x_target.cpu().numpy(),
                data.y_target.cpu().numpy(),
                shown,
                run=result.figure_run,
            )
        )
    stores = out_dir / "stores"
    result.stores, result.stores_bytes = str(stores), _disk_bytes(stores)
    if config.remove_stores:
        shutil.rmtree(stores, ignore_errors=True)
        result.stores_removed = not stores.exists()
    timings["total"] = time.perf_counter() - start
    result.timings = timings
    _write_json(out_dir / "results.json", result)
    return result


def grass_mask_rate(proj_dim: int, num_params: int, multiplier: int) -> float:
    """GraSS's keep rate with dattri's convention: about ``multiplier · K`` of the D coordinates
    survive the mask (dattri keeps exactly ``min(multiplier · K, D)``; fastjl's mask keeps each
    row independently, so the count varies around that)."""
    return min(1.0, multiplier * proj_dim / num_params)


def sparse_variants(config: DemoConfig, proj_dim: int, num_params: int) -> list[tuple[str, None, dict]]:
    """The sjlt and grass runs at ``proj_dim`` (default λ): ``(kind, λ, TRAKer keywords)``."""
    rate = grass_mask_rate(proj_dim, num_params, config.grass_multiplier)
    return [
        ("sjlt", None, {"sparsity": config.sparsity}),
        ("grass", None, {"sparsity": config.sparsity, "mask_rate": rate}),
    ]


def _disk_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` occupy on disk (memmaps may be sparse: blocks, not sizes)."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            total += min(stat.st_size, getattr(stat, "st_blocks", stat.st_size // 512 + 1) * 512)
    return total


def _targets_of_distinct_classes(labels: np.ndarray, count: int) -> list[int]:
    """The first target of each class, in order, until ``count`` are chosen: a more varied figure."""
    _, first = np.unique(labels, return_index=True)
    return sorted(first.tolist())[:count]


def _write_json(path: Path, result: DemoResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(asdict(result), f, indent=2, default=str)


def format_report(result: DemoResult) -> str:
    """The text the demo prints: setup, LDS table, stage timings."""
    c = result.config
    lines = [
        f"digits: n = {c.n_train} train, t = {c.n_targets} targets; MLP 64-{c.hidden}-10 "
        f"({result.num_params} parameters); {c.checkpoints} checkpoints, target accuracy "
        f"{result.checkpoint_accuracy:.3f}",
        f"LDS: Spearman over {c.subsets} random 50% subsets (margins averaged over {c.retrains} model(s) per "
        "subset), mean over targets, 95% bootstrap CI over targets",
        "",
        f"{'K':>6}  {'regime':<7}  {'kind':<38}  {'λ rule':<28}  {'mean λ':>9}  {'LDS [95% CI]':<22}  {'time':>7}",
    ]
    for run in result.runs:
        regime = "K < n" if run.proj_dim < c.n_train else "K >= n"
        lds = f"{run.lds:.3f} [{run.lds_low:.3f}, {run.lds_high:.3f}]"
        kind = f"{run.kind} ({run.options})" if run.options else run.kind
        lines.append(
            f"{run.proj_dim:>6}  {regime:<7}  {kind:<38}  {run.lambda_rule:<28}  {run.lambda_mean:>9.3g}  "
            f"{lds:<22}  {run.seconds:>6.1f}s"
        )
    lines += ["", "stage timings:"]
    lines += [f"  {name:<58} {seconds:>7.1f} s" for name, seconds in result.timings.items()]
    lines += ["", f"figure: {result.figure} (scores of the run {result.figure_run})"]
    mib = result.stores_bytes / 2**20
    size = f"{mib:.0f} MiB" if mib >= 10 else f"{mib:.1f} MiB"
    if result.stores_removed:
        lines.append(f"stores: {result.stores} ({size}) removed (--remove-stores)")
    elif result.stores:
        lines.append(
            f"stores: {result.stores} holds {size} (one TRAK store per run, kept to inspect them; the demo "
            f"never reuses them): delete with  rm -rf {shlex.quote(result.stores)}  or run with --remove-stores"
        )
    return "\n".join(lines)

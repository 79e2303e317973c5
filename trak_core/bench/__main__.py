"""``python -m trak_core.bench``: featurizing throughput and peak memory of the gradient paths.

Same process, same model, same batches for every path: ``torch.func`` per-example gradients +
``fastjl.project`` (the materializing path), hooks + ``fastjl.project_linear`` (dense: the same
features), and hooks + the kronecker kind (structured: other features, same K).  Times the
projected gradients of each batch (the part of featurizing that differs between the paths;
the store and Q are the same for all) and checks the dense paths' features agree.  A last
row, ``project-only``, times the projection of a random ``(B, D)`` batch alone: the floor of
both dense paths.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch

import fastjl
from fastjl.bench.memory import peak_extra_mib
from fastjl.bench.results import save_json

from ..gradients import FunctionalGradientComputer
from ..hooked_gradients import LinearHooksGradientComputer
from ..model_output import ClassificationMargin, resolve_task
from .models import GPT, mlp


def hf_gpt2(vocab_size: int, width: int, layers: int, heads: int, positions: int):
    """A Hugging Face GPT-2 built from a config (no download, random weights): HF Conv1D layers,
    learned positions, token embedding tied to the output head -- every parameter on the hooks
    path."""
    try:
        import transformers
    except ImportError as err:
        raise SystemExit(f"the gpt2 presets need transformers (pip install 'fastjl[lm]'): {err}") from None
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=positions,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def hf_gpt2_tiny():
    return hf_gpt2(2000, 64, 4, 4, 128)


def hf_gpt2_small():
    """GPT-2 small's shape (124M parameters, 50257-token vocabulary, tied embeddings)."""
    return hf_gpt2(50257, 768, 12, 12, 1024)


# name -> model factory, inputs (("dense", features, classes), ("tokens", vocab, tokens): token
# models classify over the vocabulary, or ("lm", vocab, tokens): causal language modeling of
# random token sequences), batch size, K, parameter-name prefixes left out, task.
PRESETS = {
    "mlp": dict(model=lambda: mlp([1024, 1024, 1024, 10]), inputs=("dense", 1024, 10), batch=128, proj_dim=1024),
    "quick": dict(model=lambda: mlp([12, 16, 5]), inputs=("dense", 12, 5), batch=6, proj_dim=64),
    # GPT-style models: the embeddings are left out of grad_wrt (they would need torch.func:
    # a vocab x width gradient per example).  GPT-2 small's blocks hold 85M parameters.
    "gpt-cpu": dict(
        model=lambda: GPT(512, 128, 4, 2, 64, 512),
        inputs=("tokens", 512, 64),
        batch=16,
        proj_dim=1024,
        skip=("wte.", "wpe."),
    ),
    # A tied-embedding causal LM, every parameter included (embeddings through fastjl.project_rows).
    "gpt2-tiny": dict(model=hf_gpt2_tiny, inputs=("lm", 2000, 64), batch=8, proj_dim=1024, task="causal_lm"),
    # Larger D on a CPU (5.3M parameters, 128-token sequences): where B x D starts to weigh.
    "gpt2-mini": dict(
        model=lambda: hf_gpt2(8192, 256, 4, 4, 128), inputs=("lm", 8192, 128), batch=8, proj_dim=256, task="causal_lm"
    ),
    "gpt2-small": dict(model=hf_gpt2_small, inputs=("lm", 50257, 256), batch=8, proj_dim=2048, task="causal_lm"),
}
PATHS = ("torch.func+project", "hooks+project_linear", "hooks+kronecker", "project-only")
# "project-only" times fastjl.project of a random (B, D) batch with the dense paths' projector:
# the part of both dense paths that no gradient path can avoid (the same P, generated per batch).
# Its share of a path's time bounds what a faster gradient path can gain (Amdahl).


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m trak_core.bench", description=__doc__.split("\n\n")[0].replace("``", "")
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: mlp on CPU, gpt2-small on GPU")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--batch", type=int, help="examples per batch (overrides the preset)")
    p.add_argument("--proj-dim", type=int, help="K (overrides the preset)")
    p.add_argument("--batches", type=int, default=2, help="timed batches per path (after one warm-up batch)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of: " + ", ".join(PATHS))
    p.add_argument("--save", nargs="?", const="bench/results", help="write JSON into this folder")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.preset = args.preset or ("gpt2-small" if args.device == "cuda" else "mlp")
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    return args


def make_batch(inputs, batch: int, seed: int, device, task=None):
    """A fresh random ``(x, labels)`` batch for a preset's ``inputs`` (for ``"lm"``: the task's
    ``(input_ids, attention_mask, labels)``, every token supervised)."""
    gen = torch.Generator().manual_seed(seed)
    if inputs[0] == "lm":
        ids = torch.randint(0, inputs[1], (batch, inputs[2]), generator=gen)
        return tuple(t.to(device) for t in task.as_batch({"input_ids": ids, "labels": ids}))
    if inputs[0] == "dense":
        _, features, classes = inputs
        x = torch.randn(batch, features, generator=gen)
    else:
        _, classes, tokens = inputs  # next-token style: labels range over the vocabulary
        x = torch.randint(0, classes, (batch, tokens), generator=gen)
    return x.to(device), torch.randint(0, classes, (batch,), generator=gen).to(device)


class ProjectOnly:
    """Stands in for a gradient computer: "gradients" are a fresh random ``(B, D)`` float32 batch."""

    def __init__(self, num_params: int, device):
        self.num_params, self.device = num_params, device

    def projected_per_sample_grad(self, batch, projector, model_id: int) -> torch.Tensor:
        rows = len(batch[0])
        return projector.project(torch.randn(rows, self.num_params, device=self.device), model_id)


def build(path: str, model, grad_wrt, proj_dim: int, task):
    if path == "torch.func+project":
        computer = FunctionalGradientComputer(model=model, task=task, grad_wrt=grad_wrt)
    else:
        kind = "kronecker" if path == "hooks+kronecker" else None
        computer = LinearHooksGradientComputer(model=model, task=task, grad_wrt=grad_wrt, linear_kind=kind)
    dense = "gaussian" if path == "hooks+kronecker" else "rademacher"
    return computer, fastjl.Projector(computer.num_params, proj_dim, seed=0, kind=dense)


def run(args) -> dict:
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    batch, proj_dim = args.batch or preset["batch"], args.proj_dim or preset["proj_dim"]
    torch.manual_seed(0)
    model = preset["model"]().to(device).eval()
    skip = preset.get("skip", ())
    grad_wrt = [n for n, _ in model.named_parameters() if not n.startswith(skip)] if skip else None
    task = resolve_task(preset.get("task", ClassificationMargin()))
    batches = [make_batch(preset["inputs"], batch, seed, device, task) for seed in range(args.batches + 1)]
    tokens = preset["inputs"][2] if preset["inputs"][0] == "lm" else None
    rows, reference = [], None
    for path in args.paths.split(","):
        if path == "project-only":
            computer, projector = build("torch.func+project", model, grad_wrt, proj_dim, task)
            computer = ProjectOnly(computer.num_params, device)
        else:
            computer, projector = build(path, model, grad_wrt, proj_dim, task)
        first = computer.projected_per_sample_grad(batches[0], projector, 0)  # warm-up; features for the check
        if path == "torch.func+project":
            reference = first
        agree = None
        if reference is not None and path in ("torch.func+project", "hooks+project_linear"):
            agree = ((first.double() - reference.double()).norm() / reference.double().norm()).item()

        def timed_batches(computer=computer, projector=projector):
            for timed in batches[1:]:
                computer.projected_per_sample_grad(timed, projector, 0)

        start = time.perf_counter()
        peak_mib = peak_extra_mib(timed_batches, device.type)  # synchronizes on CUDA
        seconds = time.perf_counter() - start
        rows.append(
            dict(
                path=path,
                ms_per_batch=1e3 * seconds / args.batches,
                examples_per_s=batch * args.batches / seconds,
                peak_mib=peak_mib,
                rel_diff_vs_torch_func=agree,
            )
        )
        if tokens:
            rows[-1]["tokens_per_s"] = rows[-1]["examples_per_s"] * tokens
        print(format_row(rows[-1], device.type), flush=True)
    return dict(
        preset=args.preset,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        threads=torch.get_num_threads(),
        batch=batch,
        proj_dim=proj_dim,
        num_params=computer.num_params,
        timed_batches=args.batches,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=dict(torch=torch.__version__, fastjl=fastjl.__version__, python=platform.python_version()),
        rows=rows,
    )


# Footnote for a CPU peak of exactly 0 (see fastjl/bench/memory.py): no new page was touched.
PEAK_NA_NOTE = (
    "* peak n/a: below measurement resolution.\n  On CPU the peak is the growth of the process's "
    "resident-set high-water mark, which only moves when the allocator maps new pages;\n  these batches "
    "fit in memory it already held.  Larger presets or a larger --batch give a real value."
)


def format_peak(mib, device: str) -> str:
    """The peak-MiB column: one decimal, or "n/a*" where the CPU measurement cannot resolve it."""
    if mib is None:
        return "n/a"
    if device == "cpu" and mib == 0:
        return "n/a*"
    return f"{mib:.1f}"


def format_row(row: dict, device: str = "cpu") -> str:
    peak = format_peak(row["peak_mib"], device)
    diff = "-" if row["rel_diff_vs_torch_func"] is None else f"{row['rel_diff_vs_torch_func']:.1e}"
    line = f"{row['path']:22s} {row['ms_per_batch']:10.1f} {row['examples_per_s']:12.1f} {peak:>9s} {diff:>10s}"
    return line + (f" {row['tokens_per_s']:10.0f} tokens/s" if "tokens_per_s" in row else "")


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(f"preset {args.preset} on {args.device}; columns: path, ms/batch, examples/s, peak MiB, rel. diff")
    result = run(args)
    threads = result["threads"]
    print(
        f"D = {result['num_params']}, B = {result['batch']}, K = {result['proj_dim']}, "
        f"{threads} thread{'' if threads == 1 else 's'}"
    )
    if any(format_peak(row["peak_mib"], args.device) == "n/a*" for row in result["rows"]):
        print(PEAK_NA_NOTE)
    if args.save:
        save_json(args.save, f"featurize-{args.preset}-{args.device}", result)
    return result


if __name__ == "__main__":
    main()

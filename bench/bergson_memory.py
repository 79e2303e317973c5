"""Peak memory and time of a bergson gradient collection with and without fastjl.

    python bench/bergson_memory.py                       # both variants, default sizes, CPU
    python bench/bergson_memory.py --proj-dim 2048 --hidden 256

The same tiny randomly initialized Llama (no download) and the same documents are collected by
``bergson.collect_gradients`` with ``projection_target="global"`` (LESS/TRAK-style, one vector
per document), once by bergson's own projection and once inside
``fastjl.integrations.bergson.use_fastjl()``.  Each variant runs in a fresh subprocess, so its
peak resident memory (``ru_maxrss``) is its own; the table reports it, the resident memory just
before collection (imports, model, data) and the difference, plus the wall time of the
collection alone (``time.perf_counter``), on whatever device ``--device`` names.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

VARIANTS = ("bergson", "fastjl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (internal)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=344)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--proj-dim", type=int, default=1024)
    parser.add_argument("--projection-type", choices=("rademacher", "normal"), default="rademacher")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args(argv)


def rss_mib() -> float:
    """Current resident memory of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(args) -> dict:
    import contextlib
    import tempfile

    import torch
    from bergson import GradientProcessor, IndexConfig, collect_gradients
    from bergson.data import load_module_gradients
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=args.seq,
    )
    model = LlamaForCausalLM(config).eval().to(args.device)
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, args.vocab, (args.seq,), generator=gen).tolist() for _ in range(args.docs)]
    data = Dataset.from_dict({"input_ids": docs, "doc": list(range(args.docs))})
    settings = dict(projection_dim=args.proj_dim, projection_target="global", projection_type=args.projection_type)
    if args.variant == "fastjl":
        from fastjl.integrations.bergson import use_fastjl

        context = use_fastjl()
    else:
        context = contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, context:
        cfg = IndexConfig(run_path=f"{tmp}/run", token_batch_size=args.seq * 8, **settings)
        before = rss_mib()
        start = time.perf_counter()
        collect_gradients(model=model, data=data, processor=GradientProcessor(**settings), cfg=cfg)
        seconds = time.perf_counter() - start
        grads = load_module_gradients(cfg.partial_run_path)["gradients"]
        shape = list(grads.shape)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for name, p in model.named_parameters() if name.startswith("model.layers"))
    return dict(
        variant=args.variant, seconds=seconds, rss_before_mib=before, peak_rss_mib=peak, index_shape=shape,
        projected_params=params,
    )  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    passthrough = list(argv if argv is not None else sys.argv[1:])
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, *passthrough]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    settings = {k: v for k, v in vars(args).items() if k not in ("variant", "out")}
    print(f"bergson global projection, {settings}")
    print(f"{'variant':<8} {'time s':>8} {'RSS before MiB':>15} {'peak RSS MiB':>13} {'peak - before':>14}")
    for r in rows:
        extra = r["peak_rss_mib"] - r["rss_before_mib"]
        before, peak = r["rss_before_mib"], r["peak_rss_mib"]
        print(f"{r['variant']:<8} {r['seconds']:>8.2f} {before:>15.0f} {peak:>13.0f} {extra:>14.0f}")
    import bergson
    import torch

    record = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=platform.processor() or platform.machine(),
        cpus=len(__import__("os").sched_getaffinity(0)),
        torch=torch.__version__,
        bergson=bergson.__version__,
        command=" ".join([Path(sys.argv[0]).name, *passthrough]),
        settings=settings,
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bergson-memory-{args.device}-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

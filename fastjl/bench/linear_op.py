"""``python -m fastjl.bench --op linear``: shapes, measurement and table of the project_linear benchmark.

Per shape, every contender gets the same fresh random inputs (``a`` and ``g`` ~ N(0, 1),
``--input-sets`` of them); fused and materialize+project must agree (:func:`check_agreement`)
before each contender's peak extra memory (one call) and median time are measured.
"""

from __future__ import annotations

import torch

from .linear_contenders import LINEAR_CONTENDERS, LinearShape, Unavailable, check_agreement
from .memory import peak_extra_mib
from .timing import median_ms

# batch sizes, tokens per example, (d_in, d_out) layers, proj dims
LINEAR_PRESETS = {
    # A GPT-2-small attention projection (768 x 768) at CPU scale: ~1 minute on 2 cores.
    "cpu": dict(batch=[32], tokens=[1, 8], layers=[(768, 768)], proj_dim=[1024]),
    "quick": dict(batch=[4], tokens=[1, 3], layers=[(24, 20)], proj_dim=[64]),
    # GPT-2-small layers: attention out-projection, MLP up- and down-projection.
    "gpt2": dict(
        batch=[8, 32], tokens=[128, 1024], layers=[(768, 768), (768, 3072), (3072, 768)], proj_dim=[2048, 8192]
    ),
}


def linear_shapes(args, device: str, dtype: torch.dtype) -> list[LinearShape]:
    preset = LINEAR_PRESETS[args.preset or ("gpt2" if device == "cuda" else "cpu")]
    layers = preset["layers"]
    if args.d_in or args.d_out:
        d_ins = args.d_in or sorted({i for i, _ in layers})
        d_outs = args.d_out or sorted({o for _, o in layers})
        layers = [(i, o) for i in d_ins for o in d_outs]
    return [
        LinearShape(b, t, d_in, d_out, k, args.kind, dtype)
        for d_in, d_out in layers
        for k in args.proj_dim or preset["proj_dim"]
        for t in args.tokens or preset["tokens"]
        for b in args.batch or preset["batch"]
    ]


def _inputs(shape: LinearShape, device: str, input_sets: int):
    gen = torch.Generator(device=device).manual_seed(shape.batch * 7919 + shape.tokens * 31 + shape.proj_dim)

    def randn(*size):
        return torch.randn(*size, device=device, generator=gen).to(shape.dtype)

    return [
        (randn(shape.batch, shape.tokens, shape.d_in), randn(shape.batch, shape.tokens, shape.d_out))
        for _ in range(input_sets)
    ]


def run_linear_shape(shape: LinearShape, device: str, names, reps: int, input_sets: int, rtol: float):
    """One row per contender; raises ``Disagreement`` before timing if fused != materialize+project."""
    inputs = _inputs(shape, device, input_sets)
    rows, runs = [], {}
    for name in names:
        row = dict(op="linear", contender=name, batch=shape.batch, tokens=shape.tokens, d_in=shape.d_in)
        row.update(d_out=shape.d_out, proj_dim=shape.proj_dim, dtype=str(shape.dtype).replace("torch.", ""))
        row["kind"] = "kronecker" if name == "kronecker" else shape.kind
        try:
            runs[name] = LINEAR_CONTENDERS[name](shape, device)
        except Unavailable as exc:
            row.update(ms=None, note=str(exc))
        rows.append(row)
    diffs = check_agreement(runs, *inputs[0], rtol)
    for row in rows:
        name = row["contender"]
        if name not in runs:
            continue
        row["rel_diff"] = diffs.get(name.rsplit("-", 1)[-1]) if name != "kronecker" else None
        # popped, so each contender's buffers are freed once it has been measured
        row.update(_measure(runs.pop(name), inputs, device, reps))
        row["examples_per_s"] = shape.batch / (row["ms"] * 1e-3)
    return rows


def _measure(run, inputs, device: str, reps: int) -> dict:
    peak = peak_extra_mib(lambda: run(*inputs[0]), device)
    return dict(peak_mib=peak, ms=median_ms(lambda ag: run(*ag), inputs, device=device, reps=reps))


def format_linear_table(rows) -> str:
    head = (
        f"{'op':6s} {'contender':26s} {'B':>4s} {'T':>5s} {'d_in':>5s} {'d_out':>5s} {'K':>5s} "
        f"{'ms':>10s} {'examples/s':>11s} {'peak MiB':>9s} {'rel.diff':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']:4d} {r['tokens']:5d} {r['d_in']:5d} {r['d_out']:5d} {r['proj_dim']:5d}"
        label = f"{r['op']:6s} {r['contender']:26s} {shape}"
        if r["ms"] is None:
            lines.append(f"{label}  unavailable: {r['note']}")
            continue
        diff = f"{r['rel_diff']:8.1e}" if r.get("rel_diff") is not None else "       -"
        lines.append(f"{label} {r['ms']:10.2f} {r['examples_per_s']:11.1f} {r['peak_mib']:9.1f} {diff}")
    return "\n".join(lines)


LINEAR_PLOT = dict(  # keyword arguments of save_plot for --op linear rows
    value=lambda r: r["examples_per_s"],
    ylabel="examples/s (log)",
    shape_of=lambda r: (r["batch"], r["tokens"], r["d_in"], r["d_out"], r["proj_dim"]),
    label_of=lambda s: "B={}\nT={}\n{}x{}\nK={}".format(*s),
    log=True,
)

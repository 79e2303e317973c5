"""Optional bar chart of a benchmark run (written only when matplotlib is installed)."""

from __future__ import annotations

from pathlib import Path


def _gflops(r) -> float:
    return 1e3 * r["tflops"]


def _project_shape(r) -> tuple:
    return r["batch"], r["dim"], r["proj_dim"]


def _project_label(shape) -> str:
    return "B={}\nD={:.0e}\nK={}".format(*shape)


def save_plot(rows, path: Path, title: str, *, value=_gflops, ylabel: str = "GFLOP/s", shape_of=_project_shape,
              label_of=_project_label, log: bool = False) -> Path | None:  # fmt: skip
    """``value(row)`` (default GFLOP/s) per contender for each shape (``shape_of(row)``, drawn as
    ``label_of(shape)``); returns the PNG path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = [r for r in rows if r["ms"] is not None]
    shapes = list(dict.fromkeys(shape_of(r) for r in measured))
    names = list(dict.fromkeys(r["contender"] for r in measured))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(shapes)), 4))
    for n, name in enumerate(names):
        values = {shape_of(r): value(r) for r in measured if r["contender"] == name}
        xs = [i + n * width for i, s in enumerate(shapes) if s in values]
        ax.bar(xs, [values[s] for s in shapes if s in values], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
    ax.set_xticklabels([label_of(s) for s in shapes], fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

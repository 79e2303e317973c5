"""Optional bar chart of a benchmark run (written only when matplotlib is installed)."""

from __future__ import annotations

from pathlib import Path


def save_plot(rows, path: Path, title: str) -> Path | None:
    """GFLOP/s per contender for each shape; returns the PNG path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = [r for r in rows if r["ms"] is not None]
    shapes = list(dict.fromkeys((r["batch"], r["dim"], r["proj_dim"]) for r in measured))
    names = list(dict.fromkeys(r["contender"] for r in measured))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(shapes)), 4))
    for n, name in enumerate(names):
        values = {(r["batch"], r["dim"], r["proj_dim"]): 1e3 * r["tflops"] for r in measured if r["contender"] == name}
        xs = [i + n * width for i, s in enumerate(shapes) if s in values]
        ax.bar(xs, [values[s] for s in shapes if s in values], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
    ax.set_xticklabels([f"B={b}\nD={d:.0e}\nK={k}" for b, d, k in shapes], fontsize=8)
    ax.set_ylabel("GFLOP/s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""The demo's picture: a few targets beside their most positive and most negative train examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_attribution_figure(
    path: Path,
    scores: np.ndarray,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_target: np.ndarray,
    y_target: np.ndarray,
    targets: list[int],
    top: int = 3,
    run: str = "",
) -> Path:
    """Writes a PNG grid: one row per target: the target, its ``top`` highest- and lowest-scored train digits.

    Each train digit's title is "+ label (score)" or "− label (score)": its class and, in
    parentheses, its TRAK score for that target (the estimated effect of having that train
    example in the training set on the target's margin; positive: it raises the margin).  The
    caption says so, and names the run the scores come from.

    Args:
        path: output ``.png``.
        scores: ``(n, t)`` TRAK scores.
        x_train: ``(n, 64)`` pixels; y_train: ``(n,)`` labels; x_target, y_target: the same for targets.
        targets: indices of the targets to show.
        top: examples per side.
        run: which TRAK run the scores come from (K, kind, λ), shown in the caption.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cols = 1 + 2 * top
    fig, axes = plt.subplots(len(targets), cols, figsize=(1.5 * cols, 1.7 * len(targets)), squeeze=False)
    for row, j in enumerate(targets):
        order = np.argsort(scores[:, j])
        shown = [("target", x_target[j], y_target[j], None, "black")]
        shown += [("+", x_train[i], y_train[i], scores[i, j], "tab:green") for i in order[::-1][:top]]
        shown += [("−", x_train[i], y_train[i], scores[i, j], "tab:red") for i in order[:top]]
        for ax, (kind, pixels, label, score, color) in zip(axes[row], shown):
            ax.imshow(np.asarray(pixels).reshape(8, 8), cmap="gray_r")
            title = f"target: {label}" if score is None else f"{kind} {label} ({score:.2g})"
            ax.set_title(title, fontsize=8, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2)
    caption = [
        f"TRAK: targets | top {top} positive (green) | top {top} negative (red) train digits",
        "above each train digit: its class (its TRAK score for the row's target: the estimated effect of "
        "training on it on the target's margin)",
    ]
    if run:
        caption.append(f"scores of the run {run}")
    fig.suptitle("\n".join(caption), fontsize=8)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.15 * len(caption) + 0.05) / height))  # room for the caption
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

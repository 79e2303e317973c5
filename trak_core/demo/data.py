"""The data set: scikit-learn's 8x8 digits (1797 images, 10 classes), shipped inside its wheel."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DigitsSplit:
    """A random train/target split of the digits.

    Attributes:
        x_train: ``(n, 64)`` float32 pixels scaled to [0, 1].
        y_train: ``(n,)`` int64 labels.
        x_target: ``(t, 64)`` float32, held-out examples to attribute.
        y_target: ``(t,)`` int64.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_target: torch.Tensor
    y_target: torch.Tensor

    def to(self, device) -> DigitsSplit:
        return DigitsSplit(*(t.to(device) for t in (self.x_train, self.y_train, self.x_target, self.y_target)))


def load_digits_split(n_train: int, n_targets: int, seed: int) -> DigitsSplit:
    """Disjoint random train and target sets drawn from the 1797 digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs scikit-learn: pip install scikit-learn") from e
    pixels, labels = load_digits(return_X_y=True)
    if n_train + n_targets > len(labels):
        raise ValueError(f"n_train + n_targets must be <= {len(labels)}, got {n_train} + {n_targets}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    x = torch.as_tensor(pixels, dtype=torch.float32) / 16.0  # pixel values are 0..16
    y = torch.as_tensor(labels, dtype=torch.int64)
    train, target = order[:n_train], order[n_train : n_train + n_targets]
    return DigitsSplit(x[train], y[train], x[target], y[target])

"""Small MLPs for the digits, and training many of them at once.

The demo trains a few checkpoints on the full train set and, for the LDS, ~100 models on
random halves of it.  Training them one by one would be dominated by Python overhead, so an
*ensemble* of E models is trained in lockstep with batched matrix products; each model only
sees its own subset through a 0/1 weight on the per-example losses.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

NUM_PIXELS, NUM_CLASSES = 64, 10


class DigitsMLP(torch.nn.Module):
    """64 -> hidden (ReLU) -> 10; ``hidden=0`` gives multinomial logistic regression."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        if hidden > 0:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(NUM_PIXELS, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, NUM_CLASSES)
            )
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(NUM_PIXELS, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@contextmanager
def flush_denormals():
    """Adam's moment estimates of always-zero pixels decay into denormal floats, which are ~20x
    slower on x86 CPUs; flushing them to zero changes nothing measurable and restores speed."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default


def _init_ensemble(size: int, hidden: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """PyTorch's default Linear init (uniform ±1/sqrt(fan_in)) for ``size`` models: (weight, bias) per layer.

    Weights are laid out ``(E, in, out)`` so that ``x @ weight`` is one batched matmul.
    """
    dims = [NUM_PIXELS, hidden, NUM_CLASSES] if hidden > 0 else [NUM_PIXELS, NUM_CLASSES]
    params = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        for shape in ((size, fan_in, fan_out), (size, fan_out)):
            params.append(((torch.rand(shape, generator=generator) * 2 - 1) * bound).to(device).requires_grad_())
    return params


def ensemble_logits(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``(E, B, 10)`` logits of every model of the ensemble on the shared inputs ``x`` ``(B, 64)``."""
    h = x
    for layer in range(len(params) // 2):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        h = torch.matmul(h, weight) + bias[:, None, :]  # (B, in) or (E, B, in) @ (E, in, out)
        if layer < len(params) // 2 - 1:
            h = torch.relu(h)
    return h


def train_ensemble(
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: torch.Tensor,
    *,
    hidden: int,
    steps: int,
    seed: int,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
) -> list[torch.Tensor]:
    """Trains one model per row of ``subsets`` with full-batch Adam.

    Args:
        x: ``(n, 64)`` inputs; y: ``(n,)`` labels.
        subsets: ``(E, n)`` 0/1: model e is trained on the examples where ``subsets[e]`` is 1.
        hidden: hidden width (0: logistic regression).
        steps: optimizer steps.
        seed: initialization seed (each model gets its own initialization).
    Returns:
        Ensemble parameters ``[W1 (E, 64, h), b1 (E, h), W2 (E, h, 10), b2 (E, 10)]`` (detached).
    """
    generator = torch.Generator().manual_seed(seed)
    params = _init_ensemble(subsets.shape[0], hidden, generator, x.device)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    weights = subsets.float() / subsets.float().sum(1, keepdim=True).clamp_min(1.0)
    with flush_denormals():
        for _ in range(steps):
            logits = ensemble_logits(params, x)
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), y.expand(len(params[0]), -1), reduction="none"
            )
            loss = (losses * weights).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return [p.detach() for p in params]


def state_dicts(params: list[torch.Tensor], hidden: int) -> list[dict]:
    """The ensemble as ``DigitsMLP(hidden)`` state dicts, one per model."""
    names = (
        ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"] if hidden > 0 else ["net.0.weight", "net.0.bias"]
    )
    # nn.Linear stores weights as (out, in): transpose the 2-D ones.
    return [
        {name: (p[e].T if p.dim() == 3 else p[e]).contiguous().clone() for name, p in zip(names, params)}
        for e in range(params[0].shape[0])
    ]


def margins(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(E, B)`` margins (logit of the label − logsumexp of the others) of every model."""
    with torch.no_grad():
        logits = ensemble_logits(params, x)
        is_label = torch.nn.functional.one_hot(y, NUM_CLASSES).bool().expand_as(logits)
        correct = logits.masked_fill(~is_label, 0.0).sum(-1)
        return correct - logits.masked_fill(is_label, float("-inf")).logsumexp(-1)


def accuracy(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(E,)`` accuracy of every model."""
    with torch.no_grad():
        return (ensemble_logits(params, x).argmax(-1) == y).float().mean(1)

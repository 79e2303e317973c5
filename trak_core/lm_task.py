"""TRAK's model output for causal language models (Hugging Face ``*ForCausalLM`` or alike).

Batches are HF-style dicts ``{"input_ids", "attention_mask", "labels"}`` (``attention_mask``
optional: all ones) or tuples ``(input_ids, attention_mask, labels)`` / ``(input_ids, labels)``,
every tensor ``(B, T)``.  ``labels`` follow Hugging Face's convention: aligned with
``input_ids`` and shifted inside the loss (the logits at position t predict ``labels[t + 1]``);
a label of ``-100`` is not supervised, and neither is a label at a padding position
(``attention_mask == 0``) or one predicted from a padding position.

Output and out-to-loss term.  With ``p_t`` the probability the model gives to the label of
supervised position t and ``m_t = log(p_t / (1 - p_t))`` its margin (logit of the label minus
the logsumexp of the other logits, as for TRAK's classification task):

* f(z) = Σ_t m_t, the sequence's summed margin;
* Q(z) = mean_t (1 − p_t).

Why.  The sequence's loss is L = Σ_t −log p_t = Σ_t log(1 + e^{−m_t}) (the summed token
cross-entropy), so ∇L = −Σ_t (1 − p_t) ∇m_t exactly.  TRAK writes the loss gradient as one
scalar Q times ∇f; Q·∇f = mean_t(1 − p_t) · Σ_t ∇m_t is that sum with each token's weight
(1 − p_t) replaced by the sequence's mean weight (exact when the weights are equal), and with
a single supervised token it is TRAK's classification term 1 − p exactly.  The mean (rather
than the sum) keeps Q in [0, 1] whatever the sequence length: the length already enters
through f's sum, and a summed Q would weight long documents twice.

The model is called as ``model(input_ids=..., attention_mask=..., position_ids=...)`` and its
``.logits`` (or the tensor it returns) are used.  The attention mask is passed as a 4-D
additive float mask (causal and key padding) and the positions are counted over the unmasked
tokens, so a sequence's features do not depend on the padding around it (left or right) and
the same call works under ``torch.func.vmap`` (Hugging Face's own 2-D mask handling branches
on the mask's values, which ``vmap`` cannot do).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.func import functional_call

from .model_output import ModelOutput

IGNORE_INDEX = -100


class CausalLMOutput(ModelOutput):
    """f = Σ over supervised tokens of the margin log(p / (1 − p)), Q = mean of (1 − p).

    Task names: ``"causal_lm"``, ``"language_modeling"``, ``"text_generation"``.
    See the module docstring for batches, labels and the choice of Q.
    """

    def as_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask, labels)`` from a dict or tuple batch, checked."""
        if isinstance(batch, Mapping):
            if "input_ids" not in batch:
                raise ValueError(f"a causal LM batch needs 'input_ids'; the dict has keys {sorted(batch)}")
            if batch.get("labels") is None:
                raise ValueError(
                    "a causal LM batch needs 'labels' (usually a copy of input_ids, with -100 at positions "
                    f"not to supervise); the dict has keys {sorted(batch)}"
                )
            ids, labels = batch["input_ids"], batch["labels"]
            mask = batch.get("attention_mask")
        elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
            ids, labels = batch[0], batch[-1]
            mask = batch[1] if len(batch) == 3 else None
        else:
            raise TypeError(
                "a causal LM batch is a dict with 'input_ids', 'labels' (and 'attention_mask'), or a tuple "
                f"(input_ids, attention_mask, labels) or (input_ids, labels); got {_describe(batch)}"
            )
        ids = _check_tokens(ids, "input_ids")
        labels = _check_tokens(labels, "labels", like=ids)
        if mask is None:
            mask = torch.ones_like(ids)
        else:
            mask = _check_tokens(mask, "attention_mask", like=ids)
            if ((mask != 0) & (mask != 1)).any():
                raise ValueError("attention_mask must hold only 0 and 1")
        if ids.shape[1] < 2:
            raise ValueError(f"input_ids must have at least 2 positions (one to predict from), got {ids.shape[1]}")
        empty = ~supervised_positions(labels, mask).any(1)
        if empty.any():
            rows = torch.nonzero(empty).reshape(-1).tolist()
            raise ValueError(
                f"sequences {rows[:10]} of the batch have no supervised token: every label after the first "
                "position is -100 or falls on padding (attention_mask 0), so f and Q are undefined"
            )
        return ids, mask, labels

    def get_output(self, model, weights, buffers, input_ids, attention_mask, labels):
        logits = _logits(model, weights, buffers, input_ids[None], attention_mask[None])
        margins, supervised, _ = token_margins(logits, labels[None], attention_mask[None])
        return (margins * supervised)[0].sum()

    def get_outputs(self, model, weights, buffers, batch):
        ids, mask, labels = self.as_batch(batch)
        logits = _logits(model, weights, buffers, ids, mask)
        _check_label_range(labels, logits.shape[-1])
        margins, supervised, _ = token_margins(logits, labels, mask)
        return (margins * supervised).sum(1)

    def get_out_to_loss_grad(self, model, weights, buffers, batch):
        ids, mask, labels = self.as_batch(batch)
        logits = _logits(model, weights, buffers, ids, mask)
        _check_label_range(labels, logits.shape[-1])
        _, supervised, p = token_margins(logits, labels, mask)
        return (((1.0 - p) * supervised).sum(1) / supervised.sum(1)).detach()

    def sequence_loss(self, model, batch) -> torch.Tensor:
        """``(B,)``: Σ of the token cross-entropies over supervised positions (the loss f and Q describe)."""
        ids, mask, labels = self.as_batch(batch)
        logits = model(input_ids=ids, attention_mask=causal_mask(mask, _float_dtype(model)),
                       position_ids=position_ids(mask))  # fmt: skip
        logits = (logits.logits if hasattr(logits, "logits") else logits)[:, :-1].float()
        _, supervised, _ = token_margins(logits, labels, mask, shifted=True)
        targets = labels[:, 1:].masked_fill(~supervised, 0)
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (ce * supervised).sum(1)


def supervised_positions(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T - 1)`` bool: whether the logits at position t are trained on ``labels[t + 1]``: the
    label is not -100 and both positions are tokens (with left padding, the last padding
    position would otherwise "predict" the first token, which a sequence alone never does)."""
    return (labels[:, 1:] != IGNORE_INDEX) & (mask[:, 1:] != 0) & (mask[:, :-1] != 0)


def token_margins(logits, labels, mask, shifted: bool = False):
    """``(margins, supervised, p)``, each ``(B, T - 1)``: the label's margin and probability at
    every predicting position (float32 whatever the logits' dtype), and which positions count.

    ``logits``: ``(B, T, V)`` (or ``(B, T - 1, V)`` with ``shifted``)."""
    logits = (logits if shifted else logits[:, :-1]).float()
    supervised = supervised_positions(labels, mask)
    targets = labels[:, 1:].masked_fill(~supervised, 0)
    # A mask rather than gather: indexing with a tensor would need .item() under vmap.
    is_label = torch.arange(logits.shape[-1], device=logits.device) == targets[..., None]
    correct = logits.masked_fill(~is_label, 0.0).sum(-1)
    others = logits.masked_fill(is_label, float("-inf")).logsumexp(-1)
    p = torch.exp(correct - torch.logsumexp(logits, -1))
    return correct - others, supervised, p


def causal_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, T, T)`` additive mask: 0 where query t may attend key s (s <= t, s not padding),
    the dtype's minimum elsewhere (not -inf: a padding query with no key left stays finite)."""
    tokens = mask.shape[-1]
    causal = torch.ones(tokens, tokens, dtype=torch.bool, device=mask.device).tril()
    allowed = causal & (mask[:, None, :] != 0)
    additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)``: each token's position among the unmasked tokens (left padding shifts nothing)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _logits(model, weights, buffers, ids, mask) -> torch.Tensor:
    kwargs = dict(input_ids=ids, attention_mask=causal_mask(mask, _float_dtype(model)), position_ids=position_ids(mask))
    out = functional_call(model, (weights, buffers), (), kwargs)
    return out.logits if hasattr(out, "logits") else out


def _float_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _check_tokens(t, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be (batch, tokens), got shape {tuple(t.shape)}")
    if like is not None and t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but input_ids has {tuple(like.shape)}")
    return t


def _check_label_range(labels: torch.Tensor, vocab: int) -> None:
    used = labels[labels != IGNORE_INDEX]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= vocab):
        raise ValueError(f"labels must be -100 or lie in [0, {vocab}) (the model's vocabulary), "
                         f"got values in [{int(used.min())}, {int(used.max())}]")  # fmt: skip


def _describe(batch) -> str:
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)} items"
    return type(batch).__name__

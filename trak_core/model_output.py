"""Model output functions f (what TRAK attributes) and their out-to-loss term Q.

Plugging in another output: subclass :class:`ModelOutput` (the method names and arguments are
TRAK's, so a TRAK ``AbstractModelOutput`` subclass works unchanged) and pass an instance as
``task``::

    class NegativeLoss(trak_core.ModelOutput):
        def get_output(self, model, weights, buffers, x, y):
            logits = torch.func.functional_call(model, (weights, buffers), (x.unsqueeze(0),))
            return -torch.nn.functional.cross_entropy(logits, y.unsqueeze(0))

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            return torch.ones(len(batch[0]))   # loss = -f: |d loss / d f| = 1 for every example

``get_output`` sees one example (no batch dimension) and is vmapped by the gradient computer.
The hooks gradient path (:mod:`trak_core.hooked_gradients`) needs f for a whole batch from one
ordinary forward call: a ModelOutput that also overrides :meth:`ModelOutput.get_outputs`
gets it; one that does not is featurized through ``torch.func``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch.func import functional_call


class ModelOutput(ABC):
    """Interface of a model output function (TRAK's ``AbstractModelOutput``)."""

    @abstractmethod
    def get_output(self, model: torch.nn.Module, weights: dict, buffers: dict, *example) -> torch.Tensor:
        """f(z; θ) for ONE example ``example`` (tensors without batch dimension): a 0-d tensor.

        ``weights``/``buffers`` are name -> tensor dicts for ``torch.func.functional_call``;
        gradients are taken with respect to (some of) ``weights``.
        """

    def get_outputs(self, model: torch.nn.Module, weights: dict, buffers: dict, batch) -> torch.Tensor:
        """f for every example of ``batch`` from ONE batched forward call of ``model``: ``(B,)``.

        Optional; must equal :meth:`get_output` example by example.  Examples must not interact
        (eval mode), since gradients of the summed outputs are taken per example.
        """
        raise NotImplementedError

    @abstractmethod
    def get_out_to_loss_grad(self, model: torch.nn.Module, weights: dict, buffers: dict, batch) -> torch.Tensor:
        """Q, the magnitude of d loss / d f, for a batch: ``(B,)`` or ``(B, 1)`` float tensor.

        For the margin, loss = log(1 + e^{-f}) and |d loss / d f| = 1 - p(correct class).
        """


class ClassificationMargin(ModelOutput):
    """TRAK's classification output: the margin f = logit_y − logsumexp_{c≠y} logit_c, Q = 1 − p_y.

    Batches are ``(inputs, labels)``: inputs ``(B, ...)`` float, labels ``(B,)`` int64.
    """

    def get_output(self, model, weights, buffers, x, label):
        logits = functional_call(model, (weights, buffers), (x.unsqueeze(0),))
        return margins(logits, label.reshape(1))[0]

    def get_outputs(self, model, weights, buffers, batch):
        return margins(functional_call(model, (weights, buffers), (batch[0],)), batch[1].reshape(-1))

    def get_out_to_loss_grad(self, model, weights, buffers, batch):
        x, labels = batch[0], batch[1]
        logits = functional_call(model, (weights, buffers), (x,))
        p_correct = logits.softmax(-1).gather(-1, labels.reshape(-1, 1)).reshape(-1)
        return (1.0 - p_correct).detach()


def has_batched_outputs(task) -> bool:
    """Whether ``task`` overrides :meth:`ModelOutput.get_outputs` (needed by the hooks path)."""
    method = getattr(type(task), "get_outputs", None)
    return method is not None and method is not ModelOutput.get_outputs


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` margins ``logit_y - logsumexp_{c != y} logit_c`` of ``(B, C)`` logits."""
    # A mask instead of logits[label]: indexing with a tensor would need .item() under vmap.
    is_label = torch.arange(logits.shape[-1], device=logits.device)[None, :] == labels[:, None]
    correct = logits.masked_fill(~is_label, 0.0).sum(-1)
    others = logits.masked_fill(is_label, float("-inf")).logsumexp(-1)
    return correct - others


def task_batch(task, batch) -> tuple:
    """``batch`` as the tuple of tensors the task's methods take.

    A task with an ``as_batch`` method (e.g. :class:`~trak_core.lm_task.CausalLMOutput`, which
    takes Hugging Face-style dicts) converts and checks it; other tasks take tuples or lists.
    """
    convert = getattr(task, "as_batch", None)
    if convert is not None:
        return tuple(convert(batch))
    if isinstance(batch, Mapping):
        raise TypeError(
            f"the task {type(task).__name__} takes batches as tuples of tensors, got a dict with keys "
            f"{sorted(batch)}; dict batches are read by tasks with an as_batch method (e.g. task='causal_lm')"
        )
    return tuple(batch)


# Imported here, after ModelOutput, which lm_task subclasses.
from .lm_task import CausalLMOutput  # noqa: E402

# TRAK's task names, and the causal language modeling output.
TASKS = {
    "image_classification": ClassificationMargin,
    "classification": ClassificationMargin,
    "causal_lm": CausalLMOutput,
    "language_modeling": CausalLMOutput,
    "text_generation": CausalLMOutput,
}


def resolve_task(task) -> ModelOutput:
    """A :class:`ModelOutput` instance from a task name, a ModelOutput class or an instance."""
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known names: {sorted(TASKS)}, or pass a ModelOutput")
        return TASKS[task]()
    if isinstance(task, type):
        task = task()
    if not (hasattr(task, "get_output") and hasattr(task, "get_out_to_loss_grad")):
        raise TypeError(f"task must define get_output and get_out_to_loss_grad, got {type(task).__name__}")
    return task

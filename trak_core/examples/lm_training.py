"""The canary example's model: a tiny Hugging Face GPT-2, its training loop and sampling.

GPT-2 from a config (random initialization, no download): learned positions, HF ``Conv1D``
layers and the token embedding tied to the output layer, i.e. every kind of layer trak_core's
hooks path handles for GPT-2.  Dropout is off: the model is trained for a few hundred steps to
fit its corpus, and TRAK differentiates the same (eval-mode) function that was trained.

Training minimizes the mean token cross-entropy with :meth:`CausalLMOutput.sequence_loss`, the
loss whose gradient TRAK's out-to-loss term describes (same masks, same positions), with AdamW
on batches drawn by a seeded generator: a fixed seed gives the same model on a given machine.
"""

from __future__ import annotations

import torch

from ..lm_task import CausalLMOutput, causal_mask, position_ids


def import_transformers():
    """``transformers``, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "the language-model example needs Hugging Face transformers: pip install 'fastjl[lm]' "
            f"(or transformers==5.23.0 with your torch pinned) ({err})"
        ) from None
    transformers.logging.set_verbosity_error()
    return transformers


def gpt2(vocab_size: int, width: int, layers: int, heads: int, positions: int, seed: int) -> torch.nn.Module:
    """A randomly initialized ``GPT2LMHeadModel`` (tied embeddings, no dropout), in eval mode."""
    transformers = import_transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()


def train(model: torch.nn.Module, batches: list[dict], steps: int, lr: float, seed: int) -> list[float]:
    """``steps`` AdamW steps, each on one of ``batches`` drawn at random (seeded); returns the mean
    token cross-entropy of every step."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not batches:
        raise ValueError("batches is empty: nothing to train on")
    task = CausalLMOutput()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = torch.randint(len(batches), (steps,), generator=torch.Generator().manual_seed(seed))
    losses = []
    model.train()
    for index in order.tolist():
        batch = batches[index]
        tokens = (batch["labels"][:, 1:] != -100).sum()  # the supervised positions of the batch
        loss = task.sequence_loss(model, batch).sum() / tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def sample(model: torch.nn.Module, prompt: list[int], new_tokens: int, temperature: float, seed: int,
           banned: tuple[int, ...] = ()) -> list[int]:  # fmt: skip
    """``prompt`` continued by ``new_tokens`` tokens sampled at ``temperature`` (seeded), never
    one of ``banned``; called the way trak_core calls the model (same masks and positions)."""
    generator = torch.Generator().manual_seed(seed)
    limit = model.config.n_positions
    ids = torch.tensor([prompt])
    for _ in range(new_tokens):
        window = ids[:, -limit:]
        mask = torch.ones_like(window)
        logits = model(input_ids=window, attention_mask=causal_mask(mask, torch.float32),
                       position_ids=position_ids(mask)).logits[0, -1]  # fmt: skip
        logits[list(banned)] = float("-inf")
        next_id = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        ids = torch.cat([ids, next_id[None]], 1)
    return ids[0].tolist()

"""Tiny randomly initialized Hugging Face causal LMs built from configs (no downloads).

``transformers`` is optional: tests using this module skip without it (``pytest.importorskip``).
"""

import importlib
import sys

import pytest
import torch

VOCAB = 61


def _hide_broken(name: str) -> None:
    """transformers imports torchvision/torchaudio when they are installed; a build made for
    another torch fails to import and takes every model class down with it.  Text models do not
    need them: a broken one is hidden (``sys.modules[name] = None`` reads as not installed)."""
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure (OSError, RuntimeError) means unusable
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        sys.modules[name] = None


for _name in ("torchvision", "torchaudio"):
    _hide_broken(_name)
transformers = pytest.importorskip("transformers", reason="the language-model tests need transformers")
transformers.logging.set_verbosity_error()


def gpt2(**overrides):
    """GPT-2: HF Conv1D layers, token embedding tied to the output layer, learned positions."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                     bos_token_id=0, eos_token_id=0, **overrides)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def llama(**overrides):
    """Llama: nn.Linear projections (grouped-query attention), RMSNorm, rotary positions, untied head."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **overrides)  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def gpt_neox(**overrides):
    """GPT-NeoX (Pythia): fused QKV nn.Linear, LayerNorm, partial rotary, parallel residual, untied head."""
    config = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                        eos_token_id=0, **overrides)  # fmt: skip
    return transformers.GPTNeoXForCausalLM(config)


MODELS = {"gpt2": gpt2, "llama": llama, "gpt_neox": gpt_neox}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS[name]().eval()


def token_batch(batch: int = 4, tokens: int = 6, seed: int = 0) -> dict:
    """An HF-style dict batch of random tokens, every position supervised (labels = input_ids)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, tokens), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

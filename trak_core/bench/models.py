"""Benchmark models: an MLP and a GPT-2-style transformer built from ``nn.Linear`` layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mlp(widths: list[int]) -> torch.nn.Sequential:
    """Linear layers ``widths[0] -> ... -> widths[-1]`` with ReLUs between them."""
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


class Block(torch.nn.Module):
    """GPT-2's pre-norm block: fused qkv projection, causal attention, 4x GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.c_attn, self.attn_proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.c_fc, self.mlp_proj = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = h.shape
        q, k, v = self.c_attn(self.ln_1(h)).split(width, dim=2)
        q, k, v = (t.reshape(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.attn_proj(attended.transpose(1, 2).reshape(batch, tokens, width))
        return h + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(h))))


class GPT(torch.nn.Module):
    """A GPT-2-style classifier: token + position embeddings, ``layers`` blocks, a final norm,
    and a Linear head on the last token (GPT-2 small: width 768, 12 heads, 12 layers)."""

    def __init__(self, vocab: int, width: int, heads: int, layers: int, max_tokens: int, classes: int):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, width), torch.nn.Embedding(max_tokens, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, classes, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h)[:, -1])

"""``nn.Embedding`` on the hooks path: its per-example gradient projected through the rows of
``P`` that the example's tokens touch, never formed.

Example b's gradient of a ``(V, d)`` embedding is ``G_b = Σ_t e_{x_bt} g_btᵀ`` (``g_bt`` the
gradient of the looked-up vector): row v is ``H_b[v] = Σ_{t: x_bt = v} g_bt`` and every other
row is zero.  Its projection ``Σ_v H_b[v] P[offset + v·d : offset + (v+1)·d]`` therefore needs
only the rows of ``P`` of the batch's distinct tokens: one ``fastjl.project_rows`` call on ``H``
generates exactly those rows, so the cost is ``O(#distinct tokens · d · K)`` instead of
``O(V · d · K)`` and nothing of size ``B·V·d`` exists.

The kronecker kind treats the embedding as a Linear layer from ``g`` (inputs) to the one-hot
token (outputs): ``y_b = Σ_t F_out[x_bt] ⊗ (F_inᵀ g_bt)`` with the factors
:func:`fastjl.kronecker_factors` gives a ``(V, d)`` Linear weight at the same offset, so an
embedding tied to an ``nn.Linear`` output head (same ``(V, d)`` parameter) is projected with
one consistent sketch, and the two uses add up exactly as their gradients do.  FactGraSS
(``linear_kind="factgrass"``) does the same with the masks of that ``(V, d)`` Linear weight: the
output factor is the one-hot token restricted to the kept token ids (``x_bt == kept_out``, never
a ``V``-wide one-hot), the input factor the kept coordinates of ``g_bt``; FactGraSS is linear in
the gradient, so a tied embedding and head again add up to the sketch of their summed gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import fastjl
from fastjl.factgrass import project_kept_factors
from fastjl.factgrass_spec import factgrass_masks
from fastjl.kronecker import split_proj_dim

from .layer_hooks import HookedLayer


@dataclass(frozen=True)
class EmbeddingLayer(HookedLayer):
    """``a``: ``(B, T)`` token ids; ``g``: ``(B, T, d)`` gradients of the looked-up vectors."""

    @property
    def d_in(self) -> int:
        return self.module.embedding_dim

    d_out = d_in

    @staticmethod
    def supports(module: torch.nn.Embedding) -> bool:
        # max_norm renormalizes the weight in place during the forward; scale_grad_by_freq
        # scales by counts over the whole batch (examples would interact).
        return module.max_norm is None and not module.scale_grad_by_freq

    def as_tokens(self, inp, grad_out, batch):
        return inp.reshape(batch, -1), grad_out.reshape(batch, -1, self.d_in)

    def _keep(self, ids: torch.Tensor) -> torch.Tensor:
        """Which looked-up tokens give their row a gradient (``padding_idx``'s row never gets one)."""
        if self.module.padding_idx is None:
            return torch.ones_like(ids, dtype=torch.bool)
        return ids != self.module.padding_idx

    def _kept(self, ids: torch.Tensor, g: torch.Tensor):
        """``(example, token id, float32 gradient)`` of every looked-up token that counts."""
        keep = self._keep(ids)
        example = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
        return example[keep], ids[keep], g[keep].float()

    def summed_grads(self, ids: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weight gradient summed over the batch (to check against autograd's)."""
        _, tokens, grads = self._kept(ids, g)
        total = torch.zeros(self.module.num_embeddings, self.d_in, dtype=torch.float32, device=g.device)
        return {self.weight: total.index_add_(0, tokens, grads)}

    def token_rows(self, ids: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distinct, H)``: the sorted distinct token ids that count and ``H`` ``(B, n, d)``
        float32, ``H[b, j] = Σ_{t: x_bt = distinct[j]} g_bt`` (example b's gradient rows)."""
        example, tokens, grads = self._kept(ids, g)
        distinct, slot = torch.unique(tokens, return_inverse=True)
        rows = torch.zeros(ids.shape[0], len(distinct), self.d_in, dtype=torch.float32, device=g.device)
        return distinct, rows.index_put_((example, slot), grads, accumulate=True)

    def project(self, ids, g, proj_dim: int, *, seed: int, kind: str, offset: int, backend: str, scale) -> torch.Tensor:
        """``(B, K)`` float32: the projected per-example weight gradients (dense kinds)."""
        batch, d = ids.shape[0], self.d_in
        distinct, rows = self.token_rows(ids, g)
        if distinct.numel() == 0:
            return torch.zeros(batch, proj_dim, dtype=torch.float32, device=g.device)
        # Rows v*d .. v*d + d-1 of the weight (at `offset`) for each distinct token v: one call
        # generates exactly those rows of P (Triton's kernel on CUDA tensors, else the torch
        # generator, whatever `backend` names: every backend draws the same P).
        p_rows = offset + (distinct[:, None] * d + torch.arange(d, device=g.device)).reshape(-1)
        return fastjl.project_rows(rows.reshape(batch, -1), p_rows, proj_dim, seed=seed, kind=kind, scale=scale)

    def project_kronecker(self, ids, g, proj_dim, *, seed: int, offset: int, scale) -> torch.Tensor:
        """``(B, K)`` float32: ``Σ_t F_out[x_bt] ⊗ (F_inᵀ g_bt)``, the kronecker kind's projection of
        the ``(V, d)`` weight gradient (the factors of a ``(V, d)`` Linear weight at ``offset``)."""
        vocab, d = self.module.num_embeddings, self.d_in
        k_out, k_in = split_proj_dim(proj_dim, vocab, d)
        f_out, f_in = fastjl.kronecker_factors(seed, offset, vocab, d, k_out, k_in, False, device=g.device)
        rows_out = f_out[ids] * self._keep(ids)[..., None]  # F_outᵀ one_hot(x_bt): (B, T, k_out)
        projected_in = g.float() @ f_in  # (B, T, k_in)
        result = torch.bmm(rows_out.transpose(1, 2), projected_in).reshape(ids.shape[0], k_out * k_in)
        if scale == "jl":
            result /= (k_out * k_in) ** 0.5
        return result

    def project_factgrass(
        self, ids, g, proj_dim, *, seed: int, offset: int, factor_masks, sparsity: int, backend, scale
    ) -> torch.Tensor:
        """``(B, K)``: FactGraSS of the ``(V, d)`` weight gradient as a Linear weight at ``offset``
        (output factor: the one-hot token, input factor: ``g``; no bias), masks clipped to the
        factors as for a Linear layer."""
        vocab, d = self.module.num_embeddings, self.d_in
        masks = (min(factor_masks[0], vocab), min(factor_masks[1], d))
        kept_out, kept_in = factgrass_masks(seed, offset, vocab, d, masks, device=g.device)
        compute = torch.float64 if g.dtype == torch.float64 else torch.float32
        one_hot_kept = (ids[..., None] == kept_out) & self._keep(ids)[..., None]  # (B, T, k_out)
        a_kept, g_kept = g.index_select(2, kept_in).to(compute), one_hot_kept.to(compute)
        options = dict(seed=seed, offset=offset, sparsity=sparsity, backend=backend, scale=scale)
        return project_kept_factors(a_kept, g_kept, proj_dim, **options)

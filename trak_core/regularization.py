"""The ridge λ added to ``XᵀX``: a default that stays meaningful for every K.

TRAK inverts ``XᵀX`` with λ = 0.  ``X`` is ``(n, K)``, so ``XᵀX`` (K × K) has rank at most
``min(n, K, num_params)``: once K ≥ n it is singular and ``(XᵀX)⁻¹`` is rounding noise, and
scores collapse.

Default rule: **λ = scale · tr(XᵀX) / n = scale · mean_i ‖φ_i‖²**, i.e. ``scale`` times the
mean diagonal of the Gram matrix ``XXᵀ`` (the mean squared feature norm), per checkpoint.
Why this one:

* It never vanishes (tr(XᵀX) > 0 for any nonzero feature), so ``XᵀX + λI`` is positive
  definite for every K and the Cholesky solve always succeeds.
* It is invariant to the projection.  By the push-through identity the scores
  ``X (XᵀX + λI)⁻¹ X_tᵀ = (XXᵀ + λI)⁻¹ X X_tᵀ`` are a kernel ridge regression with kernel
  ``XXᵀ ≈ (K/D) GGᵀ`` (G: unprojected gradients).  λ scales with K exactly like that kernel,
  so the regularization *relative to the kernel* is the same for every K, and as K grows the
  scores converge to the unprojected ridge scores (``tests/test_trak_exact.py`` bounds the gap).
  The other natural rule, λ = scale · tr(XᵀX) / K (the mean diagonal of XᵀX), lacks this: it
  weakens relative to the kernel as K grows past n, and its best scale moved with K in our
  measurements while this rule's did not.
* For K ≪ n it is a mild ridge relative to the spectrum of ``XᵀX`` (relative strength
  ``scale · K / n``), so it stays close to TRAK's λ = 0 where λ = 0 works.

``scale = 0.5``, measured on the digits demo (n = 1000, 5 checkpoints, LDS over 50 random
halves): scanning scale in {0.03, 0.1, 0.3, 1, 3}, the best was 0.3 for the MLP 64-32-10 at every
K tried (128, 512, 1024, 4096) and 1 for logistic regression (K = 256, 1024, 2048; a tie with 0.3
at K = 64), whereas the best scale of the tr(XᵀX)/K rule moved from 0.03 to 1 as K grew.  At
K = 256 and 2048, scale 0.5 was within 0.005 (MLP) and 0.02 (logistic) of the best of
{0.3, 0.5, 1}; scales 0.03 or 3 lost up to 0.24.  Set ``lambda_reg`` to a number for a fixed λ,
or to 0.0 for TRAK's own formula.
"""

from __future__ import annotations

import torch

DEFAULT_LAMBDA_SCALE = 0.5


def describe_lambda(lambda_reg: float | None, scale: float = DEFAULT_LAMBDA_SCALE) -> str:
    """The rule as stored in the settings, e.g. ``"default(scale=0.5)"`` or ``"0.0"``."""
    if lambda_reg is None:
        return f"default(scale={float(scale)!r})"
    return repr(float(lambda_reg))


def check_lambda(lambda_reg: float | None, scale: float) -> None:
    if lambda_reg is not None and not float(lambda_reg) >= 0.0:
        raise ValueError(f"lambda_reg must be >= 0 or None (the default rule), got {lambda_reg}")
    if not float(scale) > 0.0:
        raise ValueError(f"lambda_scale must be > 0, got {scale}")


def resolve_lambda(xtx: torch.Tensor, num_rows: int, lambda_reg: float | None, scale: float = DEFAULT_LAMBDA_SCALE):
    """The λ to use for one checkpoint.

    Args:
        xtx: ``(K, K)`` accumulated ``XᵀX``.
        num_rows: n, the number of rows of X.
        lambda_reg: a fixed λ >= 0, or None for the default rule.
        scale: the default rule's multiplier.
    Returns:
        λ as a Python float.
    """
    if lambda_reg is not None:
        return float(lambda_reg)
    return float(scale) * float(torch.trace(xtx)) / num_rows

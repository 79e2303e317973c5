"""trak_core against TRAK's formulas in closed form (float64 numpy), on a linear classifier.

The reference never touches trak_core's code path: the margin gradients of a linear model
``z = W x + b`` are derived by hand, ``∂f/∂z_c = 1[c = y] − 1[c ≠ y]·softmax_{c'≠y}(z)_c``,
``∂f/∂W = (∂f/∂z) xᵀ``, ``∂f/∂b = ∂f/∂z``, and the scores follow docs/design.md (trak_core and
its store) literally.
"""

import math

import numpy as np
import pytest
import torch

import fastjl
import trak_core

N_TRAIN, N_TARGETS, DIM, CLASSES, CHECKPOINTS = 60, 12, 6, 3, 2
NUM_PARAMS = (CLASSES - 1) * (DIM + 1)  # 14 < N_TRAIN: XᵀX of the unprojected gradients is invertible


class ReferenceClassLinear(torch.nn.Module):
    """Multinomial logistic regression whose last logit is fixed at 0.

    With a free logit per class, the margin is invariant to adding the same vector to every
    row of W (and the same number to every bias), so its gradients span at most
    D − (DIM + 1) dimensions and XᵀX is singular even without projection.  Fixing one logit
    removes that invariance: the gradients span all D dimensions.
    """

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(DIM, CLASSES - 1)

    def forward(self, x):
        return torch.nn.functional.pad(self.linear(x), (0, 1))


class IdentityProjector:
    """The "projection" P = I (K = D): concatenates the per-parameter gradients."""

    def __init__(self, dim):
        self.proj_dim = dim

    def project(self, grads, model_id=0):
        return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1).float()


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN, DIM, generator=gen)
    y = torch.randint(0, CLASSES, (N_TRAIN,), generator=gen)
    xt = torch.randn(N_TARGETS, DIM, generator=gen)
    yt = torch.randint(0, CLASSES, (N_TARGETS,), generator=gen)
    model = ReferenceClassLinear()
    checkpoints = [
        {
            "linear.weight": torch.randn(CLASSES - 1, DIM, generator=gen),
            "linear.bias": torch.randn(CLASSES - 1, generator=gen),
        }
        for _ in range(CHECKPOINTS)
    ]
    return model, checkpoints, (x, y), (xt, yt)


def run_traker(tmp_path, model, checkpoints, train, targets, **kwargs):
    traker = trak_core.TRAKer(model, "classification", N_TRAIN, save_dir=tmp_path, quiet=True, **kwargs)
    for model_id, ckpt in enumerate(checkpoints):
        traker.load_checkpoint(ckpt, model_id)
        for start in range(0, N_TRAIN, 16):  # uneven last batch on purpose
            batch = (train[0][start : start + 16], train[1][start : start + 16])
            traker.featurize(batch, num_samples=len(batch[0]))
    traker.finalize_features()
    for model_id, ckpt in enumerate(checkpoints):
        traker.start_scoring_checkpoint("exact", ckpt, model_id, N_TARGETS)
        traker.score(targets, num_samples=N_TARGETS)
    return np.array(traker.finalize_scores("exact")), traker


def margin_gradients(ckpt, x, y):
    """``(B, D)`` float64 gradients of the margin in named_parameters order (weight, bias), and Q ``(B,)``."""
    w, b = ckpt["linear.weight"].double().numpy(), ckpt["linear.bias"].double().numpy()
    x, y = x.double().numpy(), y.numpy()
    rows = np.arange(len(y))
    z = np.pad(x @ w.T + b, ((0, 0), (0, 1)))
    others = z.copy()
    others[rows, y] = -np.inf
    p_others = np.exp(others - others.max(1, keepdims=True))
    p_others /= p_others.sum(1, keepdims=True)
    dz = -p_others
    dz[rows, y] = 1.0
    dz = dz[:, :-1]  # the fixed logit has no parameters
    grads = np.concatenate([(dz[:, :, None] * x[:, None, :]).reshape(len(y), -1), dz], axis=1)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return grads, 1.0 - p[rows, y]


def reference_scores(checkpoints, train, targets, lambda_reg):
    """The scores of docs/design.md (trak_core and its store) in float64:
    mean_m Φ_m (Φ_mᵀΦ_m + λI)⁻¹ Φ_t,mᵀ ⊙ mean_m Q_m, Φ = G / sqrt(D)."""
    total, q_total = 0.0, 0.0
    for ckpt in checkpoints:
        g, q = margin_gradients(ckpt, *train)
        gt, _ = margin_gradients(ckpt, *targets)
        phi, phi_t = g / math.sqrt(NUM_PARAMS), gt / math.sqrt(NUM_PARAMS)
        xtx = phi.T @ phi
        lam = trak_core.DEFAULT_LAMBDA_SCALE * np.trace(xtx) / N_TRAIN if lambda_reg is None else lambda_reg
        total = total + phi @ np.linalg.solve(xtx + lam * np.eye(NUM_PARAMS), phi_t.T)
        q_total = q_total + q
    return total / len(checkpoints) * (q_total / len(checkpoints))[:, None]


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("lambda_reg", [None, 0.0, 0.05])
def test_identity_projection_equals_closed_form(tmp_path, lambda_reg):
    model, checkpoints, train, targets = make_problem()
    scores, traker = run_traker(
        tmp_path, model, checkpoints, train, targets, projector=IdentityProjector(NUM_PARAMS), lambda_reg=lambda_reg
    )
    expected = reference_scores(checkpoints, train, targets, lambda_reg)
    assert scores.shape == (N_TRAIN, N_TARGETS)
    assert scores.dtype == np.float32
    # float32 features and score matmul; the solve is float64.  Observed ~1e-7.
    assert relative_error(scores, expected) < 1e-5
    assert all(traker.store.model(m)["solver"] == "cholesky" for m in range(CHECKPOINTS))


def test_gradients_match_closed_form():
    """The torch.func margin gradients and Q equal the hand-derived ones (checks the reference too)."""
    model, checkpoints, train, _ = make_problem()
    model.load_state_dict(checkpoints[0])
    computer = trak_core.FunctionalGradientComputer(model, trak_core.ClassificationMargin())
    grads = computer.compute_per_sample_grad(train)
    flat = torch.cat([g.reshape(N_TRAIN, -1) for g in grads.values()], dim=1).double().numpy()
    expected, q = margin_gradients(checkpoints[0], *train)
    np.testing.assert_allclose(flat, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(computer.compute_loss_grad(train).double().numpy(), q, rtol=1e-5, atol=1e-6)


def projected_score_bound(checkpoints, train, targets, proj_dim, seed):
    """Exact scores S₀ and a rigorous bound on ‖S_K − S₀‖_F for TRAK with the Rademacher matrices P_m.

    With X = G P / sqrt(D), C = GᵀG / D and M = PPᵀ / K (invertible when K >= D), the
    push-through identity P (PᵀCP + λI)⁻¹ Pᵀ = (C + (λ/K) M⁻¹)⁻¹ gives

        S_K = G (C + μ M⁻¹)⁻¹ G_tᵀ / D,  μ = λ/K = s·tr(G M Gᵀ)/(nD)   (default rule, scale s)
        S₀  = G (C + μ₀ I )⁻¹ G_tᵀ / D,  μ₀ = s·tr(G Gᵀ)/(nD)         (no projection)

    so the projection only perturbs the ridge term.  Let H = C + μ₀I, Δ = μM⁻¹ − μ₀I,
    N = H^{-1/2} Δ H^{-1/2}, η = ‖N‖₂ < 1, U = G H^{-1/2}, V = G_t H^{-1/2}.  Then
    S_K − S₀ = U [(I + N)⁻¹ − I] Vᵀ / D and ‖(I + N)⁻¹ − I‖₂ ≤ η / (1 − η), hence

        ‖S_K − S₀‖_F ≤ ‖U‖₂ ‖V‖_F η / ((1 − η) D).

    η is small because M concentrates at I: M has unit diagonal (entries ±1) and off-diagonal
    entries of size 1/sqrt(K), ‖M − I‖₂ ≈ 2 sqrt(D/K).  Averaging over checkpoints and the
    row scaling by mean Q (the same for S_K and S₀) multiply the bound by at most max Q.
    """
    exact, bound, q_total = 0.0, 0.0, 0.0
    scale = trak_core.DEFAULT_LAMBDA_SCALE
    for model_id, ckpt in enumerate(checkpoints):
        g, q = margin_gradients(ckpt, *train)
        gt, _ = margin_gradients(ckpt, *targets)
        p = fastjl.matrix_block(seed + 10_000 * model_id, "rademacher", range(NUM_PARAMS), range(proj_dim)).numpy()
        m = p @ p.T / proj_dim
        c = g.T @ g / NUM_PARAMS
        mu0 = scale * np.trace(g @ g.T) / (N_TRAIN * NUM_PARAMS)
        mu = scale * np.trace(g @ m @ g.T) / (N_TRAIN * NUM_PARAMS)
        evals, evecs = np.linalg.eigh(c + mu0 * np.eye(NUM_PARAMS))
        h_inv_sqrt = evecs @ np.diag(evals**-0.5) @ evecs.T
        n_mat = h_inv_sqrt @ (mu * np.linalg.inv(m) - mu0 * np.eye(NUM_PARAMS)) @ h_inv_sqrt
        eta = np.linalg.norm(n_mat, 2)
        assert eta < 1
        u, v = g @ h_inv_sqrt, gt @ h_inv_sqrt
        exact = exact + u @ v.T / NUM_PARAMS
        bound += np.linalg.norm(u, 2) * np.linalg.norm(v) * eta / ((1 - eta) * NUM_PARAMS)
        q_total = q_total + q
    q_mean = q_total / len(checkpoints)
    exact = exact / len(checkpoints) * q_mean[:, None]
    return exact, bound / len(checkpoints) * q_mean.max()


def test_random_projection_correlates_with_exact_scores(tmp_path):
    """With K = 1024 (> n > D) the projected scores correlate with the exact ones above a derived threshold.

    Pearson correlation of y = x + e with ‖e − mean(e)‖ ≤ r ‖x − mean(x)‖ (r < 1) is at least
    sqrt(1 − r²): the centered vectors are at an angle of at most arcsin r.  r is the bound of
    :func:`projected_score_bound` plus the float32 error of the pipeline (bounded by 1e-5 of
    ‖S₀‖ in the identity test above), relative to the centered norm of S₀.
    """
    proj_dim, seed = 1024, 3
    model, checkpoints, train, targets = make_problem()
    scores, _ = run_traker(tmp_path, model, checkpoints, train, targets, proj_dim=proj_dim, projector_seed=seed)
    exact, bound = projected_score_bound(checkpoints, train, targets, proj_dim, seed)
    centered = np.linalg.norm(exact - exact.mean())
    r = (bound + 1e-5 * np.linalg.norm(exact)) / centered
    assert r < 0.5, f"the bound is too loose to make a meaningful test (r = {r:.3f})"
    threshold = math.sqrt(1 - r**2)
    correlation = np.corrcoef(scores.ravel(), exact.ravel())[0, 1]
    assert correlation >= threshold, f"correlation {correlation:.4f} < derived threshold {threshold:.4f}"
    # The bound holds for the error itself, not only for the correlation.
    assert np.linalg.norm(scores - exact) <= bound + 1e-5 * np.linalg.norm(exact)

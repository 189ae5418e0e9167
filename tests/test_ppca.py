"""The linear-Gaussian model: exact identities against MultivariateNormal, Bayes and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SkPCA
from torch.distributions import MultivariateNormal, kl_divergence

from latentbook import losses as L
from latentbook.ppca import LinearGaussian, fit_ppca

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _general_model(D: int = 12, d: int = 3, seed: int = 0) -> LinearGaussian:
    """A W with correlated columns: the posterior covariance is full, not diagonal."""
    g = _gen(seed)
    return LinearGaussian(torch.randn(D, d, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64), 0.5)


def _random_q(B: int, d: int, seed: int):
    g = _gen(seed)
    return torch.randn(B, d, generator=g, dtype=F64), torch.randn(B, d, generator=g, dtype=F64) - 1


def test_log_marginal_matches_multivariate_normal():
    model = _general_model()
    x = model.sample(50, generator=_gen(1)) + torch.randn(50, 12, generator=_gen(2), dtype=F64)  # also off-model x
    ref = MultivariateNormal(model.mu, covariance_matrix=model.W @ model.W.T + 0.5 * torch.eye(12, dtype=F64))
    torch.testing.assert_close(model.log_marginal(x), ref.log_prob(x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(model.covariance(), ref.covariance_matrix)


def test_log_marginal_matches_sklearn_probabilistic_pca_score():
    X = np.random.default_rng(3).normal(size=(300, 10)) @ np.random.default_rng(4).normal(size=(10, 10))
    sk = SkPCA(4, svd_solver="full").fit(X)
    # sklearn's PPCA: W = V_kᵀ (λ_k - σ²)^{1/2}, σ² = noise_variance_ (with the N - 1 normalisation).
    W = torch.from_numpy(sk.components_.T * np.sqrt(sk.explained_variance_ - sk.noise_variance_))
    model = LinearGaussian(W, torch.from_numpy(sk.mean_), sk.noise_variance_)
    torch.testing.assert_close(model.log_marginal(X), torch.from_numpy(sk.score_samples(X)), rtol=1e-10, atol=1e-10)


def test_posterior_matches_gaussian_conditioning_and_bayes_rule():
    model = _general_model()
    x = model.sample(6, generator=_gen(5))
    mean, cov = model.posterior(x)
    # Conditioning the joint Gaussian [z; x]: Cov(z, x) = Wᵀ, so E[z|x] = Wᵀ C⁻¹ (x - mu), Cov = I - Wᵀ C⁻¹ W.
    C = model.covariance()
    torch.testing.assert_close(mean, (model.W.T @ torch.linalg.solve(C, (x - model.mu).T)).T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov, torch.eye(3, dtype=F64) - model.W.T @ torch.linalg.solve(C, model.W), rtol=1e-10, atol=1e-12)
    # Bayes: log p(z|x) = log p(x, z) - log p(x), for any z.
    z = torch.randn(6, 3, generator=_gen(6), dtype=F64)
    log_post = MultivariateNormal(mean, covariance_matrix=cov).log_prob(z)
    torch.testing.assert_close(log_post, model.log_joint(x, z) - model.log_marginal(x), rtol=1e-10, atol=1e-10)


def test_elbo_plus_kl_is_log_marginal_for_any_q():
    model = _general_model()
    x = model.sample(40, generator=_gen(7))
    q_mu, q_logvar = _random_q(40, 3, seed=8)
    elbo, kl = model.elbo(x, q_mu, q_logvar), model.kl_to_posterior(q_mu, q_logvar, x)
    torch.testing.assert_close(elbo + kl, model.log_marginal(x), rtol=1e-12, atol=1e-8)
    assert (kl > 0).all() and (elbo < model.log_marginal(x)).all()
    # KL against torch's full-covariance Gaussian KL.
    mean, cov = model.posterior(x)
    q = MultivariateNormal(q_mu, covariance_matrix=torch.diag_embed(torch.exp(q_logvar)))
    torch.testing.assert_close(kl, kl_divergence(q, MultivariateNormal(mean, covariance_matrix=cov)), rtol=1e-10, atol=1e-10)


def test_closed_form_elbo_matches_monte_carlo():
    model = _general_model()
    x = model.sample(3, generator=_gen(9))
    q_mu, q_logvar = _random_q(3, 3, seed=10)
    z = L.reparameterize(q_mu.expand(100_000, 3, 3), q_logvar.expand(100_000, 3, 3), generator=_gen(11))
    terms = model.log_joint(x, z) - L.log_normal_diag(z, q_mu, q_logvar)  # [S, B]
    se = terms.std(0) / math.sqrt(z.shape[0])
    assert ((terms.mean(0) - model.elbo(x, q_mu, q_logvar)).abs() < 4 * se).all()


def test_elbo_equals_log_marginal_at_the_exact_posterior():
    """Orthogonal columns make the posterior diagonal, so a mean-field q can equal it."""
    g = _gen(12)
    W = torch.linalg.qr(torch.randn(9, 3, generator=g, dtype=F64)).Q * torch.tensor([3.0, 1.0, 0.5], dtype=F64)
    model = LinearGaussian(W, torch.zeros(9, dtype=F64), 0.2)
    x = model.sample(30, generator=g)
    mean, cov = model.posterior(x)
    torch.testing.assert_close(cov, torch.diag(torch.diagonal(cov)), rtol=0, atol=1e-14)  # diagonal indeed
    q_mu, q_logvar = model.encode(x)
    torch.testing.assert_close(model.elbo(x, q_mu, q_logvar), model.log_marginal(x), rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(model.kl_to_posterior(q_mu, q_logvar, x), torch.zeros(30, dtype=F64), rtol=0, atol=1e-9)


def test_sample_has_the_model_covariance():
    model = _general_model(D=5, d=2, seed=13)
    x, z = model.sample(200_000, generator=_gen(14), return_latents=True)
    assert x.shape == (200_000, 5) and z.shape == (200_000, 2)
    torch.testing.assert_close(x.mean(0), model.mu, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), model.covariance(), atol=0.05, rtol=0.02)


# --------------------------------------------------------------------------------------------- fitting
def _planted(N: int = 20_000, D: int = 10, d: int = 3, sigma2: float = 0.05, seed: int = 15):
    g = _gen(seed)
    W = torch.randn(D, d, generator=g, dtype=F64)
    truth = LinearGaussian(W, torch.randn(D, generator=g, dtype=F64), sigma2)
    return truth, truth.sample(N, generator=g)


def test_fit_ppca_recovers_planted_model():
    truth, X = _planted()
    fit = fit_ppca(X, 3)
    assert fit.sigma2 == pytest.approx(0.05, rel=0.05)
    # Same subspace: principal angles between span(W) and span(W_true) near 0.
    Qf, Qt = torch.linalg.qr(fit.W).Q, torch.linalg.qr(truth.W).Q
    cosines = torch.linalg.svdvals(Qf.T @ Qt)
    assert float(torch.arccos(cosines.clamp(max=1)).max()) < 0.02
    # W is identifiable only up to rotation; WWᵀ is.
    torch.testing.assert_close(fit.W @ fit.W.T, truth.W @ truth.W.T, rtol=0, atol=0.15 * float((truth.W**2).sum(1).max()))
    # fit_ppca's W has orthogonal columns (so its posterior is diagonal).
    WtW = fit.W.T @ fit.W
    torch.testing.assert_close(WtW, torch.diag(torch.diagonal(WtW)), rtol=0, atol=1e-10)


def test_fit_ppca_is_a_likelihood_maximum():
    _, X = _planted(N=5000)
    fit = fit_ppca(X, 3)
    best = float(fit.log_marginal(X).mean())
    g = _gen(16)
    for _ in range(10):  # perturbed parameters are worse
        W = fit.W + 0.05 * torch.randn(fit.W.shape, generator=g, dtype=F64)
        mu = fit.mu + 0.05 * torch.randn(fit.mu.shape, generator=g, dtype=F64)
        assert float(LinearGaussian(W, mu, fit.sigma2).log_marginal(X).mean()) < best
    for s in (0.9, 1.1):
        assert float(LinearGaussian(fit.W, fit.mu, fit.sigma2 * s).log_marginal(X).mean()) < best
    # Stationary point: the gradient of the mean log-likelihood in W and mu vanishes.
    W = fit.W.clone().requires_grad_()
    mu = fit.mu.clone().requires_grad_()
    LinearGaussian(W, mu, fit.sigma2).log_marginal(X).mean().backward()
    assert float(W.grad.abs().max()) < 1e-8 and float(mu.grad.abs().max()) < 1e-8
    # And sklearn's PPCA (N - 1 normalisation) is not better on the training data.
    sk = SkPCA(3, svd_solver="full").fit(X.numpy())
    assert sk.score(X.numpy()) <= best + 1e-9


def test_fit_ppca_on_images_and_errors():
    g = _gen(17)
    imgs = torch.rand(300, 1, 6, 6, generator=g)
    fit = fit_ppca(imgs, 4)
    assert fit.W.shape == (36, 4) and fit.W.dtype == F64
    torch.testing.assert_close(fit.mu, imgs.reshape(300, 36).double().mean(0), rtol=1e-6, atol=1e-6)
    assert fit.log_marginal(imgs).shape == (300,)
    for d in (0, 36, 2.0):
        with pytest.raises(ValueError, match="d must be"):
            fit_ppca(imgs, d)
    with pytest.raises(ValueError, match="no variance outside"):
        fit_ppca(torch.randn(50, 2, generator=g, dtype=F64) @ torch.randn(2, 6, generator=g, dtype=F64), 2)
    with pytest.raises(ValueError, match="sigma2"):
        LinearGaussian(torch.zeros(4, 2), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="mu must have shape"):
        LinearGaussian(torch.zeros(4, 2), torch.zeros(3), 1.0)
    model = LinearGaussian(torch.zeros(4, 2), torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="D=4"):
        model.log_marginal(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        model.elbo(torch.zeros(3, 4), torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="z must be"):
        model.log_likelihood(torch.zeros(3, 4), torch.zeros(2, 2))

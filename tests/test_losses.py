"""Losses against torch.distributions, closed forms and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from latentbook import losses as L
from latentbook.ppca import LinearGaussian

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------- log-likelihoods
def test_bernoulli_log_prob_matches_torch_distributions():
    g = _gen(1)
    logits = torch.randn(8, 1, 28, 28, generator=g, dtype=F64) * 4
    x = (torch.rand(8, 1, 28, 28, generator=g, dtype=F64) < 0.3).to(F64)
    ref = Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(L.bernoulli_log_prob(logits, x), ref)


def test_bernoulli_log_prob_grey_levels_and_extreme_logits():
    g = _gen(2)
    logits = torch.randn(5, 30, generator=g, dtype=F64)
    x = torch.rand(5, 30, generator=g, dtype=F64)  # grey levels in [0, 1]
    p = torch.sigmoid(logits)
    ref = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(1)
    torch.testing.assert_close(L.bernoulli_log_prob(logits, x), ref)
    # Logits of ±100 in float32: sigmoid saturates to exactly 0/1, a naive log would give -inf/nan.
    big = torch.tensor([[100.0, -100.0, 100.0, -100.0]])
    out = L.bernoulli_log_prob(big, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert torch.isfinite(out).all()
    assert float(out) == pytest.approx(-200.0, rel=1e-6)  # the two right ones cost ~e^-100, the wrong ones 100 each
    torch.testing.assert_close(out, Bernoulli(logits=big).log_prob(torch.tensor([[1.0, 0.0, 0.0, 1.0]])).sum(1))


@pytest.mark.parametrize("log_var_kind", ["scalar", "per_pixel", "per_sample_pixel"])
def test_gaussian_log_prob_matches_normal(log_var_kind):
    g = _gen(3)
    mean = torch.randn(6, 1, 4, 4, generator=g, dtype=F64)
    x = torch.randn(6, 1, 4, 4, generator=g, dtype=F64)
    log_var = {
        "scalar": -0.7,
        "per_pixel": torch.randn(1, 4, 4, generator=g, dtype=F64),
        "per_sample_pixel": torch.randn(6, 1, 4, 4, generator=g, dtype=F64),
    }[log_var_kind]
    std = torch.exp(0.5 * torch.as_tensor(log_var, dtype=F64))
    ref = Normal(mean, std).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(L.gaussian_log_prob(mean, x, log_var), ref)


def test_gaussian_log_prob_is_scaled_mse_plus_constant():
    g = _gen(4)
    x_hat, x = torch.rand(3, 784, generator=g, dtype=F64), torch.rand(3, 784, generator=g, dtype=F64)
    D = 784
    expected = -0.5 * D * L.mse(x_hat, x) - 0.5 * D * math.log(2 * math.pi)
    torch.testing.assert_close(L.gaussian_log_prob(x_hat, x), expected)
    torch.testing.assert_close(L.mse(x_hat, x), F.mse_loss(x_hat, x, reduction="none").mean(1))


def test_shape_errors():
    a, b = torch.zeros(2, 3), torch.zeros(2, 4)
    for fn in (L.bernoulli_log_prob, L.gaussian_log_prob, L.mse, L.gaussian_kl, L.reparameterize):
        with pytest.raises(ValueError, match="same shape"):
            fn(a, b)
    with pytest.raises(ValueError, match="log_var"):
        L.gaussian_log_prob(a, a, torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[B\]"):
        L.elbo_terms(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="beta"):
        L.elbo_terms(torch.zeros(3), torch.zeros(3), beta=-1)


# --------------------------------------------------------------------------------------------- KL divergences
def test_gaussian_kl_matches_torch_and_monte_carlo():
    g = _gen(5)
    mu = torch.randn(7, 4, generator=g, dtype=F64)
    logvar = torch.randn(7, 4, generator=g, dtype=F64)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    prior = Independent(Normal(torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64)), 1)
    kl = L.gaussian_kl(mu, logvar)
    torch.testing.assert_close(kl, kl_divergence(q, prior))
    # Monte Carlo: E_q[log q(z) - log p(z)], within 4 standard errors.
    z = q.sample((200_000,))
    terms = q.log_prob(z) - prior.log_prob(z)
    se = terms.std(0) / math.sqrt(len(z))
    assert ((terms.mean(0) - kl).abs() < 4 * se).all()
    # Zero exactly at the prior.
    assert L.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


def test_gaussian_kl_between_matches_torch_with_broadcast_prior():
    g = _gen(6)
    mu_q, logvar_q = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    mu_p, logvar_p = torch.randn(3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    ref = kl_divergence(
        Independent(Normal(mu_q, torch.exp(0.5 * logvar_q)), 1),
        Independent(Normal(mu_p, torch.exp(0.5 * logvar_p)), 1),
    )
    torch.testing.assert_close(L.gaussian_kl_between(mu_q, logvar_q, mu_p, logvar_p), ref)
    # The standard-normal special case agrees with gaussian_kl.
    zeros = torch.zeros(3, dtype=F64)
    torch.testing.assert_close(L.gaussian_kl_between(mu_q, logvar_q, zeros, zeros), L.gaussian_kl(mu_q, logvar_q))
    with pytest.raises(ValueError, match="broadcast"):
        L.gaussian_kl_between(mu_q, logvar_q, torch.zeros(4), torch.zeros(4))


def test_log_normal_diag_broadcasts_over_samples():
    g = _gen(7)
    mu, logvar = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    z = torch.randn(6, 4, 3, generator=g, dtype=F64)
    ref = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)
    out = L.log_normal_diag(z, mu, logvar)
    assert out.shape == (6, 4)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(L.log_normal_diag(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


# --------------------------------------------------------------------------------------------- reparameterisation
def test_reparameterize_distribution_and_reproducibility():
    mu = torch.tensor([1.5, -2.0], dtype=F64).expand(100_000, 2)
    logvar = torch.tensor([0.0, math.log(0.25)], dtype=F64).expand(100_000, 2)
    z = L.reparameterize(mu, logvar, generator=_gen(8))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.5, -2.0], dtype=F64), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5], dtype=F64), atol=0.01, rtol=0)
    torch.testing.assert_close(L.reparameterize(mu, logvar, generator=_gen(8)), z, rtol=0, atol=0)


def test_reparameterized_gradient_matches_analytic():
    """E[z²] = μ² + σ² for z ~ N(μ, σ²): d/dμ = 2μ, d/dσ = 2σ (so d/dlogvar = σ²)."""
    n, mu0, sigma0 = 200_000, 0.7, 1.3
    mu = torch.full((n,), mu0, dtype=F64, requires_grad=True)  # one leaf per sample: per-sample gradients
    logvar = torch.full((n,), 2 * math.log(sigma0), dtype=F64, requires_grad=True)
    z = L.reparameterize(mu, logvar, generator=_gen(9))
    (z**2).sum().backward()
    for grads, exact in ((mu.grad, 2 * mu0), (logvar.grad, sigma0**2)):
        est, se = grads.mean(), grads.std() / math.sqrt(n)
        assert abs(float(est) - exact) < 4 * float(se), (float(est), exact, float(se))
    # d/dσ = (d/dlogvar) · dlogvar/dσ = (d/dlogvar) · 2/σ
    assert float(logvar.grad.mean()) * 2 / sigma0 == pytest.approx(2 * sigma0, rel=0.02)


# --------------------------------------------------------------------------------------------- ELBO bookkeeping
def test_elbo_terms():
    recon = torch.tensor([-100.0, -80.0], dtype=F64)
    kl = torch.tensor([10.0, 20.0], dtype=F64)
    out = L.elbo_terms(recon, kl)
    assert float(out["recon"]) == -90.0 and float(out["kl"]) == 15.0
    assert float(out["elbo"]) == -105.0 and float(out["loss"]) == 105.0
    out = L.elbo_terms(recon, kl, beta=4.0)
    assert float(out["elbo"]) == -105.0 and float(out["loss"]) == 90.0 + 60.0


# --------------------------------------------------------------------------------------------- IWAE
def _model(D: int = 6, d: int = 2, seed: int = 0) -> LinearGaussian:
    """A linear-Gaussian model whose W has orthogonal columns, so its posterior is diagonal."""
    g = _gen(seed)
    Q = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=F64)).Q
    W = Q * torch.tensor([2.0, 0.8, 1.5, 1.1][:d], dtype=F64)
    return LinearGaussian(W, torch.randn(D, generator=g, dtype=F64), 0.3)


def _imperfect_encoder(model: LinearGaussian):
    def encode(x):
        mu, logvar = model.encode(x)
        return mu + 0.4, logvar + 0.6  # shifted and too wide: a deliberately wrong q
    return encode


def test_iwae_k1_is_the_one_sample_elbo_estimate():
    model = _model()
    x = model.sample(10, generator=_gen(10))
    enc = _imperfect_encoder(model)
    bound = L.iwae_bound(enc, model.decode_log_prob, x, 1, generator=_gen(11))
    mu, logvar = enc(x)
    z = L.reparameterize(mu, logvar, generator=_gen(11))  # the same eps as the bound drew
    elbo_hat = model.log_likelihood(x, z) + L.log_normal_diag(z) - L.log_normal_diag(z, mu, logvar)
    torch.testing.assert_close(bound, elbo_hat, rtol=1e-13, atol=1e-12)


def test_iwae_chunked_logsumexp_equals_direct_average_of_weights():
    """Whatever the chunking, the bound is log-mean-exp of the weights of the z actually drawn."""
    model = _model()
    x = model.sample(4, generator=_gen(12))
    enc = _imperfect_encoder(model)
    for chunk in (1, 7, 50, 1000):
        seen = []

        def decode(x_, z):
            seen.append(z)  # observe the samples; the decoder itself is the real one
            return model.decode_log_prob(x_, z)

        bound = L.iwae_bound(enc, decode, x, 50, chunk_size=chunk, generator=_gen(13))
        z = torch.cat(seen)  # [50, B, d]
        assert z.shape == (50, 4, 2) and len(seen) == math.ceil(50 / chunk)
        mu, logvar = enc(x)
        log_w = model.log_joint(x, z) - L.log_normal_diag(z, mu, logvar)
        torch.testing.assert_close(bound, torch.logsumexp(log_w, 0) - math.log(50), rtol=1e-12, atol=1e-12)


def test_automatic_chunk_size_bounds_the_decoder_output():
    assert L.default_chunk_size(100 * 784, 5000) == L.CHUNK_ELEMENTS // 78_400 == 26
    assert L.default_chunk_size(10, 3) == 3  # never more than k
    assert L.default_chunk_size(10**8, 5) == 1  # never less than 1
    model = _model(D=784, d=2)
    x = model.sample(100, generator=_gen(20))
    sizes = []

    def decode(x_, z):
        sizes.append(z.shape[0])
        return model.decode_log_prob(x_, z)

    with torch.no_grad():
        bound = L.iwae_bound(model.encode, decode, x, 60, generator=_gen(21))
    assert sizes == [26, 26, 8]
    torch.testing.assert_close(bound, model.log_marginal(x), rtol=1e-10, atol=1e-8)


def test_iwae_with_exact_posterior_is_exact_for_every_k():
    model = _model()
    x = model.sample(20, generator=_gen(14))
    exact = model.log_marginal(x)
    for k in (1, 10, 1000):
        bound = L.iwae_bound(model.encode, model.decode_log_prob, x, k, chunk_size=64, generator=_gen(k))
        torch.testing.assert_close(bound, exact, rtol=1e-10, atol=1e-10)


def test_iwae_rises_with_k_toward_the_exact_log_marginal():
    model = _model()
    x = model.sample(200, generator=_gen(15))
    exact = model.log_marginal(x)
    enc = _imperfect_encoder(model)
    mu, logvar = enc(x)
    elbo = model.elbo(x, mu, logvar)
    gaps = {}
    for k, reps in ((1, 20), (10, 10), (100, 10), (1000, 4)):
        runs = torch.stack([L.iwae_bound(enc, model.decode_log_prob, x, k, generator=_gen(100 * k + r)) for r in range(reps)])
        gap = exact - runs  # [reps, B], positive in expectation
        gaps[k] = (float(gap.mean()), float(gap.std() / math.sqrt(gap.numel())))
        if k == 1:  # k = 1 is an unbiased estimate of the ELBO
            assert abs(float((runs - elbo).mean())) < 4 * gaps[1][1]
    means = [gaps[k][0] for k in (1, 10, 100, 1000)]
    assert means[0] > means[1] > means[2] > means[3], gaps
    assert means[0] > 0.5  # q is really imperfect: the ELBO is far below log p(x)
    assert abs(means[3]) < 3 * gaps[1000][1] + 0.01, gaps  # within 3 standard errors (+ the O(1/k) bias)


def test_iwae_bound_dataset_batches_and_images():
    model = _model(D=16, d=2)
    x = model.sample(25, generator=_gen(16))
    out = L.iwae_bound_dataset(model.encode, model.decode_log_prob, x.reshape(25, 1, 4, 4), 5, batch_size=7)
    assert out.shape == (25,) and out.device.type == "cpu"
    torch.testing.assert_close(out, model.log_marginal(x), rtol=1e-10, atol=1e-10)
    one_batch = L.iwae_bound_dataset(model.encode, model.decode_log_prob, x, 30, batch_size=100, generator=_gen(17))
    torch.testing.assert_close(one_batch, L.iwae_bound(model.encode, model.decode_log_prob, x, 30, generator=_gen(17)))
    assert not one_batch.requires_grad
    for bad in dict(k=0), dict(k=2.5), dict(chunk_size=0):
        kwargs = dict(k=3, chunk_size=4) | bad
        with pytest.raises(ValueError, match="k|chunk_size"):
            L.iwae_bound(model.encode, model.decode_log_prob, x, kwargs.pop("k"), **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        L.iwae_bound_dataset(model.encode, model.decode_log_prob, x, 3, batch_size=0)

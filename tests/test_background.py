"""The background appendix's identities, through the package, against scipy, torch.distributions and
closed forms (chapter book/background.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from latentbook import information as info
from latentbook import losses
from latentbook.models import bernoulli_kl
from latentbook.ppca import LinearGaussian

F64 = torch.float64
MIX = ([0.5, 0.5], [-2.0, 2.0], [0.6, 0.6])  # the appendix's bimodal density


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- entropy and cross-entropy
def test_bernoulli_entropy_matches_torch_distributions_and_handles_0_and_1():
    p = torch.linspace(0.001, 0.999, 101, dtype=F64)
    torch.testing.assert_close(info.bernoulli_entropy(p), Bernoulli(probs=p).entropy())
    assert info.bernoulli_entropy(torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]
    assert info.bernoulli_entropy(torch.tensor(0.5)).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        info.bernoulli_entropy(torch.tensor([1.5]))


def test_bce_is_a_cross_entropy_entropy_plus_kl():
    """BCE(x, q) = H(x, q) = H(x) + KL(x || q): its minimum over q is H(x), reached at q = x."""
    g = _gen(1)
    x = torch.rand(4, 1, 28, 28, generator=g, dtype=F64).clamp(0.01, 0.99)
    logits = torch.randn(4, 1, 28, 28, generator=g, dtype=F64)
    q = torch.sigmoid(logits)
    cross = -losses.bernoulli_log_prob(logits, x)  # [4]
    torch.testing.assert_close(cross, F.binary_cross_entropy(q, x, reduction="none").sum((1, 2, 3)))
    split = (info.bernoulli_entropy(x) + bernoulli_kl(x, q)).sum((1, 2, 3))
    torch.testing.assert_close(cross, split)
    # at q = x the cross-entropy is the entropy, not 0
    at_x = -losses.bernoulli_log_prob(torch.logit(x), x)
    torch.testing.assert_close(at_x, info.bernoulli_entropy(x).sum((1, 2, 3)))


# ------------------------------------------------------------------------------------ the Gaussian identities
def test_gaussian_log_density_and_entropy_match_torch_distributions():
    g = _gen(2)
    mu, logvar = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    z = torch.randn(5, 3, generator=g, dtype=F64)
    ref = Normal(mu, torch.exp(0.5 * logvar))
    torch.testing.assert_close(losses.log_normal_diag(z, mu, logvar), ref.log_prob(z).sum(-1))
    torch.testing.assert_close(info.gaussian_entropy(logvar), ref.entropy().sum(-1))


def test_kl_is_minus_entropy_minus_expected_log_density():
    g = _gen(3)
    mq, lq, mp, lp = (torch.randn(6, 4, generator=g, dtype=F64) for _ in range(4))
    kl = losses.gaussian_kl_between(mq, lq, mp, lp)
    torch.testing.assert_close(kl, -info.gaussian_entropy(lq) - info.gaussian_expected_log_density(mq, lq, mp, lp))
    ref = kl_divergence(Normal(mq, torch.exp(0.5 * lq)), Normal(mp, torch.exp(0.5 * lp))).sum(-1)
    torch.testing.assert_close(kl, ref)


def test_expected_log_density_against_monte_carlo():
    g = _gen(4)
    mq, lq = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.2, -0.5], dtype=F64)
    mp, lp = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.4, 0.1], dtype=F64)
    z = mq + torch.exp(0.5 * lq) * torch.randn(400_000, 2, generator=g, dtype=F64)
    mc = losses.log_normal_diag(z, mp, lp)
    exact = info.gaussian_expected_log_density(mq, lq, mp, lp).item()
    assert abs(mc.mean().item() - exact) < 5 * mc.std().item() / math.sqrt(len(mc))


def test_the_kl_asymmetry_of_issue_14():
    """A q with 1/9 of the target's variance costs 0.65 nats of KL(q || p); one 9 times wider 2.90."""
    zero = torch.zeros(1, 1, dtype=F64)
    narrow = losses.gaussian_kl_between(zero, torch.full((1, 1), -math.log(9), dtype=F64), zero, zero).item()
    wide = losses.gaussian_kl_between(zero, torch.full((1, 1), math.log(9), dtype=F64), zero, zero).item()
    assert narrow == pytest.approx(0.5 * (1 / 9 - 1 + math.log(9)))
    assert round(narrow, 2) == 0.65 and round(wide, 2) == 2.90


def test_gaussian_product_against_numerical_integration():
    mu, var, log_c = info.gaussian_product(torch.tensor(0.5, dtype=F64), torch.tensor(2.0, dtype=F64),
                                           torch.tensor(-1.0, dtype=F64), torch.tensor(0.5, dtype=F64))
    f = lambda z: stats.norm.pdf(z, 0.5, math.sqrt(2.0)) * stats.norm.pdf(z, -1.0, math.sqrt(0.5))  # noqa: E731
    c, _ = integrate.quad(f, -np.inf, np.inf)
    assert math.exp(log_c.item()) == pytest.approx(c, rel=1e-8)
    mean, _ = integrate.quad(lambda z: z * f(z) / c, -np.inf, np.inf)
    second, _ = integrate.quad(lambda z: z * z * f(z) / c, -np.inf, np.inf)
    assert mu.item() == pytest.approx(mean, rel=1e-8)
    assert var.item() == pytest.approx(second - mean**2, rel=1e-7)
    with pytest.raises(ValueError):
        info.gaussian_product(torch.tensor(0.0), torch.tensor(-1.0), torch.tensor(0.0), torch.tensor(1.0))


def test_gaussian_conditional_is_the_ppca_posterior():
    """Conditioning the joint of (z, x) of probabilistic PCA on x gives the posterior ppca computes."""
    g = _gen(5)
    D, d, sigma2 = 6, 2, 0.3
    W = torch.randn(D, d, generator=g, dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)
    model = LinearGaussian(W, mu, sigma2)
    mean = torch.cat([torch.zeros(d, dtype=F64), mu])
    cov = torch.zeros(d + D, d + D, dtype=F64)
    cov[:d, :d] = torch.eye(d, dtype=F64)
    cov[:d, d:], cov[d:, :d] = W.T, W
    cov[d:, d:] = W @ W.T + sigma2 * torch.eye(D, dtype=F64)
    x = model.sample(4, generator=g)
    cond_mean, cond_cov = info.gaussian_conditional(mean, cov, x)
    post_mean, post_cov = model.posterior(x)
    torch.testing.assert_close(cond_mean, post_mean)
    torch.testing.assert_close(cond_cov, post_cov)
    one_mean, _ = info.gaussian_conditional(mean, cov, x[0])
    torch.testing.assert_close(one_mean, post_mean[0])
    with pytest.raises(ValueError):
        info.gaussian_conditional(mean, cov, torch.zeros(d + D))


def test_gaussian_conditional_against_the_2d_formula():
    rho, s1, s2 = 0.8, 1.5, 0.5
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=F64)
    m, c = info.gaussian_conditional(torch.tensor([1.0, -1.0], dtype=F64), cov, torch.tensor([0.0], dtype=F64))
    assert m.item() == pytest.approx(1.0 + rho * s1 / s2 * 1.0)
    assert c.item() == pytest.approx(s1**2 * (1 - rho**2))
    MultivariateNormal(torch.zeros(2, dtype=F64), cov)  # a valid covariance


# --------------------------------------------------------------------------------- KL fits in both directions
def test_mixture_density_is_normalised_and_matches_scipy():
    z = torch.linspace(-12, 12, 20_001, dtype=F64)
    lp = info.mixture_log_density(z, *MIX)
    assert torch.trapezoid(lp.exp(), z).item() == pytest.approx(1.0, abs=1e-10)
    w, m, s = MIX
    ref = sum(wk * stats.norm.pdf(z.numpy(), mk, sk) for wk, mk, sk in zip(w, m, s))
    np.testing.assert_allclose(lp.exp().numpy(), ref, rtol=1e-10, atol=1e-300)
    with pytest.raises(ValueError):
        info.mixture_log_density(z, [0.5, 0.6], [0, 1], [1, 1])


def test_kl_on_grid_matches_the_closed_form():
    z = torch.linspace(-15, 15, 30_001, dtype=F64)
    lp = Normal(0.3, 1.2).log_prob(z.float()).to(F64)
    lq = Normal(-0.5, 0.7).log_prob(z.float()).to(F64)
    ref = kl_divergence(Normal(0.3, 1.2), Normal(-0.5, 0.7)).item()
    assert info.kl_on_grid(lp, lq, z) == pytest.approx(ref, rel=1e-5)


def test_forward_kl_fit_matches_moments_and_is_a_minimum():
    m, s = info.fit_gaussian_forward_kl(*MIX)
    w, mu, sd = MIX
    mean, _ = integrate.quad(lambda z: z * sum(a * stats.norm.pdf(z, b, c) for a, b, c in zip(w, mu, sd)),
                             -np.inf, np.inf)
    second, _ = integrate.quad(lambda z: z * z * sum(a * stats.norm.pdf(z, b, c) for a, b, c in zip(w, mu, sd)),
                               -np.inf, np.inf)
    assert m == pytest.approx(mean, abs=1e-9) and s == pytest.approx(math.sqrt(second - mean**2), rel=1e-8)
    z = torch.linspace(-12, 12, 24_001, dtype=F64)
    lp = info.mixture_log_density(z, *MIX)

    def fwd(mm, ss):
        return info.kl_on_grid(lp, Normal(torch.tensor(mm, dtype=F64), ss).log_prob(z), z)

    best = fwd(m, s)
    for dm, ds in ((0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1)):
        assert fwd(m + dm, s + ds) > best


def test_reverse_kl_fit_seeks_a_mode():
    """With well-separated modes, the reverse-KL fit from near a mode is (almost) that mode's Gaussian,
    at KL(q || p) ≈ -log w (the mixture's weight of that mode), and its value agrees with quadrature."""
    w = [0.3, 0.7]
    mix = (w, [-4.0, 4.0], [0.5, 1.0])
    for start, k in ((-3.0, 0), (3.0, 1)):
        m, s, kl = info.fit_gaussian_reverse_kl(*mix, init_mean=start, init_std=1.0)
        assert m == pytest.approx(mix[1][k], abs=1e-3) and s == pytest.approx(mix[2][k], rel=1e-3)
        assert kl == pytest.approx(-math.log(w[k]), abs=1e-4)
        z = torch.linspace(-20, 20, 40_001, dtype=F64)
        lq = Normal(torch.tensor(m, dtype=F64), s).log_prob(z)
        assert info.kl_on_grid(lq, info.mixture_log_density(z, *mix), z) == pytest.approx(kl, abs=1e-6)


def test_reverse_kl_fit_is_stationary_and_narrower_than_the_forward_fit():
    m, s, kl = info.fit_gaussian_reverse_kl(*MIX, init_mean=1.0, init_std=1.0)
    z = torch.linspace(-15, 15, 30_001, dtype=F64)
    lp = info.mixture_log_density(z, *MIX)

    def rev(mm, ss):
        return info.kl_on_grid(Normal(torch.tensor(mm, dtype=F64), ss).log_prob(z), lp, z)

    assert rev(m, s) == pytest.approx(kl, abs=1e-6)
    for dm, ds in ((0.02, 0), (-0.02, 0), (0, 0.02), (0, -0.02)):
        assert rev(m + dm, s + ds) > kl
    assert m > 1.5 and s < info.fit_gaussian_forward_kl(*MIX)[1] / 2


# ------------------------------------------------------------------------------------------ Jensen
def test_jensen_gap_of_a_lognormal_is_half_its_variance():
    """log E[w] - E[log w] = σ²/2 for w = exp(N(μ, σ²)); the Monte Carlo gap agrees."""
    g = _gen(6)
    mu, sigma = 0.2, 0.8
    w = torch.exp(mu + sigma * torch.randn(2_000_000, generator=g, dtype=F64))
    gap = math.log(w.mean().item()) - torch.log(w).mean().item()
    assert gap == pytest.approx(sigma**2 / 2, abs=0.01)
    assert gap > 0


# ------------------------------------------------------------------------------------ mutual information
def test_mutual_information_of_a_linear_gaussian_encoder():
    """x ~ N(0, 1), q(z|x) = N(a x, s²): I(x; z) = ½ log(1 + a²/s²), rate = I + KL(q(z) || p(z))."""
    g = _gen(7)
    a, s = 1.0, 0.5
    x = torch.randn(3000, 1, generator=g, dtype=F64)
    out = info.encoder_mutual_information(a * x, torch.full_like(x, 2 * math.log(s)), n_samples=8, generator=g)
    assert out["mi"] == pytest.approx(0.5 * math.log(1 + a**2 / s**2), abs=0.03)
    ex2 = (x**2).mean().item()
    assert out["rate"] == pytest.approx(0.5 * (a**2 * ex2 + s**2 - math.log(s**2) - 1), rel=1e-12)
    assert out["mi"] + out["marginal_kl"] == pytest.approx(out["rate"], abs=0.02)
    assert 0 <= out["mi"] <= out["log_n"] and out["marginal_kl"] >= -0.01


def test_mutual_information_extremes():
    """An encoder that ignores x carries no information; one that separates N inputs carries log N."""
    g = _gen(8)
    same = info.encoder_mutual_information(torch.zeros(50, 2, dtype=F64), torch.zeros(50, 2, dtype=F64), 2, g)
    assert same["mi"] == pytest.approx(0.0, abs=1e-12) and same["rate"] == 0.0
    far = torch.arange(50, dtype=F64).unsqueeze(1) * 100
    apart = info.encoder_mutual_information(far, torch.zeros(50, 1, dtype=F64), 2, g)
    assert apart["mi"] == pytest.approx(math.log(50), abs=1e-9)
    with pytest.raises(ValueError):
        info.encoder_mutual_information(torch.zeros(3), torch.zeros(3))

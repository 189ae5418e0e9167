"""The probabilistic chapters (latent-variable models, the ELBO, the reparameterisation trick).

Importance-sampling helpers against the IWAE bound and exact marginals, gradient estimators against
analytic gradients and variances, and the identities the chapters verify, asserted through the package.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from latentbook import data, losses, models
from latentbook import montecarlo as mc
from latentbook.ppca import LinearGaussian, fit_ppca

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vae(likelihood: str = "bernoulli", d: int = 3, seed: int = 0) -> models.VAE:
    torch.manual_seed(seed)
    vae = models.build({"arch": "vae", "latent_dim": d, "likelihood": likelihood, "hidden": [32]})
    if likelihood == "gaussian":
        with torch.no_grad():
            vae.obs_log_var.fill_(-1.3)
    return vae.eval()


def _binary_images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.2), generator=_gen(seed))


# --------------------------------------------------------------------------------------------- importance sampling
def test_log_weights_reproduce_iwae_bound_with_the_same_draws():
    vae = _vae()
    x = _binary_images(4)
    lw = mc.log_weights(vae.encode, vae.log_px_given_z, x, 300, chunk_size=128, generator=_gen(5))
    assert lw.shape == (300, 4)
    with torch.no_grad():
        ref = losses.iwae_bound(vae.encode, vae.log_px_given_z, x, 300, chunk_size=128, generator=_gen(5))
    torch.testing.assert_close(mc.log_mean_exp(lw), ref)


def test_prior_encoder_gives_naive_monte_carlo_weights():
    """With the prior as proposal, log w = log p(x|z): prior and proposal densities cancel."""
    vae = _vae(d=2)
    x = _binary_images(3)
    enc = mc.prior_encoder(2)
    mu, logvar = enc(x)
    assert mu.shape == (3, 2) and (mu == 0).all() and (logvar == 0).all()
    lw = mc.log_weights(enc, vae.log_px_given_z, x, 50, generator=_gen(2))
    # the same draws by hand: reparameterize(0, 0) = eps
    z = losses.reparameterize(torch.zeros(50, 3, 2), torch.zeros(50, 3, 2), _gen(2))
    torch.testing.assert_close(lw, vae.log_px_given_z(x, z).detach())


def test_naive_and_importance_sampling_converge_to_the_exact_marginal():
    """A linear-Gaussian model, where log p(x) is exact: both estimators are consistent, the posterior
    as proposal is exact with a single sample (every weight equals p(x))."""
    g = _gen(3)
    model = LinearGaussian(torch.randn(6, 1, generator=g, dtype=F64), torch.zeros(6, dtype=F64), 0.8)
    x = model.sample(5, generator=g)
    exact = model.log_marginal(x)
    naive = mc.log_mean_exp(mc.log_weights(mc.prior_encoder(1), model.decode_log_prob, x.to(F64), 200_000,
                                           chunk_size=20_000, generator=g))
    torch.testing.assert_close(naive, exact, atol=0.02, rtol=0)
    lw_post = mc.log_weights(model.encode, model.decode_log_prob, x, 7, generator=g)
    torch.testing.assert_close(lw_post, exact.expand(7, 5), atol=1e-9, rtol=0)
    assert torch.allclose(mc.effective_sample_size(lw_post), torch.full((5,), 7.0, dtype=F64))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_pairwise_log_likelihood_matches_per_pair_decoding(likelihood):
    vae = _vae(likelihood, d=4)
    x = _binary_images(5) if likelihood == "bernoulli" else torch.rand(5, 1, 28, 28, generator=_gen(4))
    z = torch.randn(70, 4, generator=_gen(6))
    fast = mc.pairwise_log_likelihood(vae, x, z, chunk_size=32)
    with torch.no_grad():
        slow = vae.log_px_given_z(x, z[:, None].expand(70, 5, 4))
    assert fast.shape == (70, 5)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-3)
    # flat images are accepted too
    torch.testing.assert_close(mc.pairwise_log_likelihood(vae, x.flatten(1), z), fast)


def test_pairwise_log_likelihood_refuses_non_vaes_and_per_image_z():
    vae = _vae()
    with pytest.raises(ValueError, match=r"\[S, d\]"):
        mc.pairwise_log_likelihood(vae, _binary_images(2), torch.zeros(4, 2, 3))
    with pytest.raises(TypeError, match="decoder_params"):
        mc.pairwise_log_likelihood(models.build({"arch": "mlp_ae", "latent_dim": 2}), _binary_images(2),
                                   torch.zeros(4, 2))


def test_running_estimate_and_weight_diagnostics():
    lw = torch.randn(40, 3, generator=_gen(7), dtype=F64) * 5
    run = mc.running_log_mean_exp(lw)
    w = torch.exp(lw)
    ref = torch.log(torch.cumsum(w, 0) / torch.arange(1, 41, dtype=F64)[:, None])
    torch.testing.assert_close(run, ref)
    torch.testing.assert_close(run[-1], mc.log_mean_exp(lw))
    torch.testing.assert_close(mc.best_weight_share(lw), w.max(0).values / w.sum(0))
    shares = mc.running_best_weight_share(lw)
    torch.testing.assert_close(shares[-1], mc.best_weight_share(lw))
    torch.testing.assert_close(shares[9], mc.best_weight_share(lw[:10]))
    assert (shares[0] == 1).all()
    torch.testing.assert_close(mc.effective_sample_size(lw), w.sum(0) ** 2 / (w**2).sum(0))
    equal = torch.zeros(10, 2)
    torch.testing.assert_close(mc.best_weight_share(equal), torch.full((2,), 0.1))
    torch.testing.assert_close(mc.effective_sample_size(equal), torch.full((2,), 10.0))
    # weights of e^-500 (a log p(x|z) of a digit) would underflow to 0 if exponentiated; the log-space tools do not
    far = torch.tensor([-500.0, -520.0, -560.0])
    assert torch.exp(far).sum() == 0
    assert math.isclose(float(mc.log_mean_exp(far)), -500.0 + math.log((1 + math.exp(-20) + math.exp(-60)) / 3),
                        rel_tol=1e-6)
    with pytest.raises(ValueError):
        mc.running_log_mean_exp(torch.zeros(0))


# --------------------------------------------------------------------------------------------- gradient estimators
def _quadratic(c: torch.Tensor):
    """f(z) = |z - c|²: E = |mu - c|² + Σ σ², ∇_mu = 2 (mu - c), ∇_logvar = σ²."""
    return (lambda z: ((z - c) ** 2).sum(-1)), (lambda mu, lv: (2 * (mu - c), torch.exp(lv)))


def _exponential(a: torch.Tensor):
    """f(z) = exp(a·z): E = exp(a·mu + ½ Σ a² σ²), ∇_mu = a E, ∇_logvar = ½ a² σ² E."""

    def grad(mu, lv):
        e = torch.exp(a @ mu + 0.5 * (a**2 * torch.exp(lv)).sum())
        return a * e, 0.5 * a**2 * torch.exp(lv) * e

    return (lambda z: torch.exp(z @ a)), grad


@pytest.mark.parametrize("estimator", [mc.pathwise_grad, mc.score_function_grad])
@pytest.mark.parametrize("problem", ["quadratic", "exponential"])
def test_gradient_estimators_are_unbiased(estimator, problem):
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    lv = torch.tensor([0.0, -1.0, 0.7], dtype=F64)
    if problem == "quadratic":
        f, grad = _quadratic(torch.tensor([1.0, 0.0, -1.0], dtype=F64))
    else:
        f, grad = _exponential(torch.tensor([0.3, -0.2, 0.25], dtype=F64))
    g_mu, g_lv = estimator(f, mu, lv, 4, repeats=40_000, generator=_gen(8))
    assert g_mu.shape == g_lv.shape == (40_000, 3)
    true_mu, true_lv = grad(mu, lv)
    for est, true in ((g_mu, true_mu), (g_lv, true_lv)):
        se = est.std(0) / math.sqrt(len(est))
        assert ((est.mean(0) - true).abs() < 4.5 * se + 1e-12).all(), (est.mean(0), true, se)


def test_gradient_estimator_variances_match_closed_forms():
    """f(z) = z², z ~ N(mu, σ²), gradient in mu, one sample: pathwise 2(mu + σε) has variance 4σ²; the score
    function (mu + σε)² ε / σ has variance mu⁴/σ² + 14 mu² + 15 σ². Averaging S samples divides both by S."""
    f = lambda z: (z**2).sum(-1)  # noqa: E731
    for m, s in ((1.0, 1.0), (2.0, 0.5)):
        mu, lv = torch.tensor([m], dtype=F64), torch.tensor([2 * math.log(s)], dtype=F64)
        pw = mc.pathwise_grad(f, mu, lv, 1, repeats=200_000, generator=_gen(9))[0]
        sf = mc.score_function_grad(f, mu, lv, 1, repeats=200_000, generator=_gen(10))[0]
        assert float(pw.var()) == pytest.approx(4 * s**2, rel=0.03)
        assert float(sf.var()) == pytest.approx(m**4 / s**2 + 14 * m**2 + 15 * s**2, rel=0.08)
        pw16 = mc.pathwise_grad(f, mu, lv, 16, repeats=50_000, generator=_gen(11))[0]
        assert float(pw16.var()) == pytest.approx(4 * s**2 / 16, rel=0.05)


def test_score_function_gap_grows_with_dimension():
    """With f(z) = |z|², the score-function estimate of ∂/∂mu_1 multiplies the whole f by ε_1: its variance
    grows with d while the pathwise one stays 4σ²."""
    f = lambda z: (z**2).sum(-1)  # noqa: E731
    ratios = []
    for d in (1, 8, 32):
        mu, lv = torch.ones(d, dtype=F64), torch.zeros(d, dtype=F64)
        pw = mc.pathwise_grad(f, mu, lv, 1, repeats=20_000, generator=_gen(12))[0][:, 0]
        sf = mc.score_function_grad(f, mu, lv, 1, repeats=20_000, generator=_gen(13))[0][:, 0]
        assert float(pw.var()) == pytest.approx(4.0, rel=0.05)
        ratios.append(float(sf.var() / pw.var()))
    assert ratios[0] < ratios[1] < ratios[2]
    assert ratios[2] > 10 * ratios[0]


def test_score_function_handles_non_differentiable_f_and_baselines():
    """f(z) = 1[z > 0]: E = Φ(mu/σ), ∇_mu = φ(mu/σ)/σ. The pathwise estimator sees a zero derivative
    almost everywhere (and is wrong); the score function is right, with or without a baseline."""
    f = lambda z: (z[..., 0] > 0).to(z.dtype)  # noqa: E731
    mu, lv = torch.tensor([0.3], dtype=F64), torch.tensor([0.0], dtype=F64)
    true = math.exp(-0.5 * 0.3**2) / math.sqrt(2 * math.pi)
    pw = mc.pathwise_grad(f, mu, lv, 1, repeats=1000, generator=_gen(14))[0]
    assert (pw == 0).all()
    plain = mc.score_function_grad(f, mu, lv, 8, repeats=20_000, generator=_gen(15))[0]
    based = mc.score_function_grad(f, mu, lv, 8, repeats=20_000, baseline=0.6, generator=_gen(15))[0]
    for est in (plain, based):
        assert abs(float(est.mean()) - true) < 4.5 * float(est.std()) / math.sqrt(len(est))
    assert based.var() < 0.8 * plain.var()
    with pytest.raises(ValueError, match="baseline"):
        mc.score_function_grad(f, mu, lv, baseline=float("nan"))


def test_gradient_estimators_validate_and_chunk():
    f = lambda z: (z**2).sum(-1)  # noqa: E731
    mu, lv = torch.zeros(2), torch.zeros(2)
    with pytest.raises(ValueError, match=r"\[d\]"):
        mc.pathwise_grad(f, torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="n_samples"):
        mc.pathwise_grad(f, mu, lv, 0)
    with pytest.raises(ValueError, match="f must map"):
        mc.pathwise_grad(lambda z: z, mu, lv)
    # chunking over repeats changes memory, not the estimator: same shapes, same mean and variance
    full = mc.pathwise_grad(f, mu.double(), lv.double(), 5, repeats=4000, generator=_gen(16))
    chunked = mc.pathwise_grad(f, mu.double(), lv.double(), 5, repeats=4000, generator=_gen(17), max_elements=100)
    for a, b, true in zip(full, chunked, (0.0, 1.0)):  # ∇_mu = 2 mu = 0, ∇_logvar = σ² = 1
        assert a.shape == b.shape == (4000, 2)
        for est in (a, b):
            assert ((est.mean(0) - true).abs() < 4.5 * est.std(0) / math.sqrt(4000)).all()
        assert float(b.var()) == pytest.approx(float(a.var()), rel=0.15)


def test_sampling_blocks_gradients_and_rsample_does_not():
    mu = torch.tensor([0.5], requires_grad=True)
    sigma = torch.tensor([2.0], requires_grad=True)
    assert not Normal(mu, sigma).sample().requires_grad
    z = Normal(mu, sigma).rsample()
    (dz_dmu,) = torch.autograd.grad(z.sum(), mu, retain_graph=True)
    (dz_dsigma,) = torch.autograd.grad(z.sum(), sigma)
    assert float(dz_dmu) == 1.0
    torch.testing.assert_close(dz_dsigma, (z.detach() - 0.5) / 2.0)  # = ε


# --------------------------------------------------------------------------------------------- the Gaussian KL
def test_closed_form_gaussian_kl_against_torch_and_monte_carlo():
    g = _gen(17)
    mu = torch.randn(4, 5, generator=g, dtype=F64)
    logvar = torch.randn(4, 5, generator=g, dtype=F64) - 1
    kl = losses.gaussian_kl(mu, logvar)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(kl, kl_divergence(q, p))
    z = q.sample((200_000,))
    mc_kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(mc_kl, kl, atol=0.03, rtol=0)
    # the derivative in log σ² is ½(σ² - 1): bounded below by -½; in σ it is σ - 1/σ, unbounded
    lv = torch.tensor([[-12.0]], dtype=F64, requires_grad=True)
    (g_lv,) = torch.autograd.grad(losses.gaussian_kl(torch.zeros(1, 1, dtype=F64), lv).sum(), lv)
    torch.testing.assert_close(g_lv, 0.5 * (torch.exp(lv.detach()) - 1))


# --------------------------------------------------------------------------------------------- the ELBO on pPCA
@pytest.fixture(scope="module")
def mnist_small():
    x, _ = data.load("mnist", "train", n=1500)
    xt, _ = data.load("mnist", "test", n=40)
    return x, xt


@pytest.mark.parametrize("d", [1, 16])
def test_elbo_decomposition_on_ppca_fitted_to_mnist(mnist_small, d):
    x, xt = mnist_small
    model = fit_ppca(x, d)
    g = _gen(18)
    log_px = model.log_marginal(xt)
    q_mu = torch.randn(len(xt), d, generator=g, dtype=F64) * 2
    q_lv = torch.randn(len(xt), d, generator=g, dtype=F64) - 2
    elbo, kl = model.elbo(xt, q_mu, q_lv), model.kl_to_posterior(q_mu, q_lv, xt)
    assert ((elbo + kl - log_px).abs() <= 1e-9 * log_px.abs().clamp_min(1)).all()
    assert (kl > 0).all() and (elbo < log_px).all()
    # the posterior as q: KL = 0, the bound is tight
    m, lv = model.encode(xt)
    torch.testing.assert_close(model.kl_to_posterior(m, lv, xt), torch.zeros(len(xt), dtype=F64), atol=1e-8, rtol=0)
    torch.testing.assert_close(model.elbo(xt, m, lv), log_px, atol=1e-8, rtol=1e-12)
    # the reconstruction-minus-KL form, estimated by sampling, agrees with the closed form
    z = losses.reparameterize(q_mu[:4].expand(20_000, 4, d), q_lv[:4].expand(20_000, 4, d), g)
    lik = model.log_likelihood(xt[:4], z)  # [S, 4]
    mc_elbo = lik.mean(0) - losses.gaussian_kl(q_mu[:4], q_lv[:4])
    assert ((mc_elbo - elbo[:4]).abs() < 5 * lik.std(0) / math.sqrt(len(lik))).all()


def test_importance_weighted_bound_on_ppca_rises_toward_log_marginal(mnist_small):
    x, xt = mnist_small
    model = fit_ppca(x, 8)
    log_px = model.log_marginal(xt[:20])
    m, lv = model.encode(xt[:20])
    wide = lambda xx: (m, lv + math.log(4.0))  # noqa: E731  too wide a q: finite-variance weights
    means = []
    for k in (1, 10, 100):
        reps = torch.stack([losses.iwae_bound(wide, model.decode_log_prob, xt[:20], k, generator=_gen(19 + r))
                            for r in range(30)])
        means.append(float((reps - log_px).mean()))
    assert means[0] < means[1] < means[2] < 0
    assert abs(means[2]) < 0.2 * abs(means[0])
    # k = 1 is the ELBO in expectation
    assert means[0] == pytest.approx(float((model.elbo(xt[:20], m, lv + math.log(4.0)) - log_px).mean()), rel=0.05)


# --------------------------------------------------------------------------------------------- decoders and losses
def test_gaussian_decoder_is_scaled_mse_and_bernoulli_decoder_is_bce():
    g = _gen(20)
    x = torch.rand(6, 1, 28, 28, generator=g, dtype=F64)
    x_hat = torch.rand(6, 1, 28, 28, generator=g, dtype=F64)
    sigma2, D = 0.3, 784
    lp = losses.gaussian_log_prob(x_hat, x, math.log(sigma2))
    mse = losses.mse(x_hat, x)
    torch.testing.assert_close(lp, -D * mse / (2 * sigma2) - D / 2 * math.log(2 * math.pi * sigma2))
    torch.testing.assert_close(lp, Normal(x_hat, math.sqrt(sigma2)).log_prob(x).sum((1, 2, 3)))
    xb = torch.bernoulli(x, generator=g)
    logits = torch.randn(6, 1, 28, 28, generator=g, dtype=F64)
    bce = F.binary_cross_entropy(torch.sigmoid(logits), xb, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(losses.bernoulli_log_prob(logits, xb), -bce)

"""latentbook.diffusion against oracles: autograd of torch.distributions' log-densities, the forward
chain run step by step, Bayes' rule with Gaussian densities, torch.distributions.kl_divergence and
direct sums; the DDPM's loss against an independent computation; seeded samplers."""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import latentbook as lb
from latentbook import diffusion as dm

torch.set_default_dtype(torch.float32)


def _mixture(dtype=torch.float64):
    w = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)
    mu = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [1.0, -1.2]], dtype=dtype)
    a = torch.tensor([[[0.3, 0.1], [0.0, 0.2]], [[0.2, 0.0], [0.1, 0.4]], [[0.25, 0.0], [-0.1, 0.15]]], dtype=dtype)
    return w, mu, a @ a.transpose(1, 2) + 1e-3 * torch.eye(2, dtype=dtype)


@pytest.mark.parametrize("sigma", [0.0, 0.1, 0.7])
def test_mixture_score_is_the_gradient_of_the_log_density(sigma):
    w, mu, cov = _mixture()
    x = (torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2).requires_grad_()
    eye = torch.eye(2, dtype=torch.float64)
    dist = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=w),
                                                 MultivariateNormal(mu, cov + sigma**2 * eye))
    (grad,) = torch.autograd.grad(dist.log_prob(x).sum(), x)
    assert torch.allclose(dm.mixture_score(x.detach(), w, mu, cov, sigma), grad, atol=1e-10)
    # far from every mode the closed form stays finite (a softmax of log-densities)
    far = torch.tensor([[40.0, -35.0]], dtype=torch.float64)
    assert torch.isfinite(dm.mixture_score(far, w, mu, cov, sigma)).all()


def test_smoothed_mixture_is_the_law_of_noisy_samples():
    w, mu, cov = _mixture()
    g = torch.Generator().manual_seed(1)
    x = dm.mixture(w, mu, cov).sample((200_000,))
    noisy = x + 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    assert torch.allclose(noisy.mean(0), dm.mixture(w, mu, cov, 0.5).mean, atol=0.01)
    assert torch.allclose(noisy.var(0), dm.mixture(w, mu, cov, 0.5).variance, atol=0.02)


def test_the_optimal_denoiser_gives_the_smoothed_score():
    """Tweedie: for one Gaussian N(m, s² I), E[x | x̃] = x̃ + σ² ∇ log p_σ(x̃) with p_σ = N(m, (s² + σ²) I)."""
    m, s2, sigma = torch.tensor([[1.0, -2.0]], dtype=torch.float64), 0.5, 0.3
    x_noisy = torch.randn(10, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    posterior_mean = (s2 * x_noisy + sigma**2 * m) / (s2 + sigma**2)  # the conjugate Gaussian's mean
    w, mu, cov = torch.ones(1, dtype=torch.float64), m, s2 * torch.eye(2, dtype=torch.float64)[None]
    assert torch.allclose(dm.denoiser_score(posterior_mean, x_noisy, sigma),
                          dm.mixture_score(x_noisy, w, mu, cov, sigma), atol=1e-12)


def test_score_helpers_refuse_nonsense():
    w, mu, cov = _mixture()
    with pytest.raises(ValueError, match="sigma"):
        dm.mixture_score(torch.zeros(3, 2, dtype=torch.float64), w, mu, cov, -0.1)
    with pytest.raises(ValueError, match="x must be"):
        dm.mixture_score(torch.zeros(3, 3, dtype=torch.float64), w, mu, cov)
    with pytest.raises(ValueError, match="weights"):
        dm.mixture_score(torch.zeros(3, 2, dtype=torch.float64), w * 2, mu, cov)
    with pytest.raises(ValueError, match="covs"):
        dm.mixture(w, mu, cov[:2])
    with pytest.raises(ValueError, match="sigma"):
        dm.denoiser_score(torch.zeros(2, 2), torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="shape"):
        dm.denoiser_score(torch.zeros(2, 2), torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="step"):
        dm.langevin(lambda x: -x, torch.zeros(2, 1), step=0.0, n_steps=3)
    with pytest.raises(ValueError, match="decreasing"):
        dm.annealed_langevin(lambda x, s: -x, [0.1, 1.0], torch.zeros(2, 1), step=0.01, n_steps=3)


def test_langevin_samples_a_gaussian_from_its_score_and_is_seeded():
    m, s = 2.0, 0.5
    score = lambda x: (m - x) / s**2  # noqa: E731
    x0 = torch.zeros(20_000, 1, dtype=torch.float64)
    x = dm.langevin(score, x0, step=1e-2, n_steps=400, generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - m) < 0.02 and abs(x.std().item() - s) < 0.02
    again = dm.langevin(score, x0, step=1e-2, n_steps=400, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    xa = dm.annealed_langevin(lambda y, sig: (m - y) / (s**2 + sig**2), [0.5, 0.2, 0.1], x0, step=1e-2,
                              n_steps=300, generator=torch.Generator().manual_seed(0))
    assert abs(xa.mean().item() - m) < 0.03 and abs(xa.std().item() - math.sqrt(s**2 + 0.01)) < 0.03


def test_schedule_matches_ho_et_al():
    s = dm.linear_schedule()
    assert s.T == 1000 and math.isclose(float(s.betas[0]), 1e-4) and math.isclose(float(s.betas[-1]), 0.02)
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert float(s.posterior_var[0]) == 0.0
    assert float(s.alpha_bar[-1]) < 1e-4  # x_T is nearly pure noise
    for bad in [dict(T=1), dict(beta_1=0.0), dict(beta_1=0.1, beta_T=0.01), dict(beta_T=1.5)]:
        with pytest.raises(ValueError):
            dm.linear_schedule(**bad)


def test_q_sample_matches_running_the_chain():
    s = dm.linear_schedule(T=200, beta_T=0.05)
    x0 = torch.tensor([[1.0, -1.0, 0.3]], dtype=torch.float64).expand(100_000, 3).contiguous()
    for t in (1, 17, 200):
        chain = dm.forward_chain(x0, t, s, generator=torch.Generator().manual_seed(t))
        ab = float(s.alpha_bar[t - 1])
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        closed = dm.q_sample(x0, t, eps, s)
        for x in (chain, closed):  # both have mean √ᾱ x0 and variance 1 - ᾱ
            assert torch.allclose(x.mean(0), math.sqrt(ab) * x0[0], atol=0.01)
            assert torch.allclose(x.var(0), torch.full((3,), 1 - ab, dtype=torch.float64), rtol=0.03, atol=1e-6)
    # the closed form, exactly, for a given eps
    eps = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([1, 5, 50, 200])
    ab = s.alpha_bar[t - 1][:, None]
    assert torch.allclose(dm.q_sample(x0[:4], t, eps, s), ab.sqrt() * x0[:4] + (1 - ab).sqrt() * eps)
    assert torch.equal(dm.q_sample(x0[:4], 0, eps, s), x0[:4])


def test_forward_helpers_refuse_nonsense():
    s = dm.linear_schedule(T=10)
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="t must lie in 0..10"):
        dm.q_sample(x, 11, x, s)
    with pytest.raises(ValueError, match="t must lie in 1..10"):
        dm.posterior(x, x, 0, s)
    with pytest.raises(ValueError, match="t must"):
        dm.q_sample(x, torch.tensor([1.0, 2.0, 3.0]), x, s)
    with pytest.raises(ValueError, match="t must"):
        dm.q_sample(x, torch.tensor([1, 2]), x, s)
    with pytest.raises(ValueError, match="eps"):
        dm.q_sample(x, 1, torch.zeros(3, 5), s)
    with pytest.raises(ValueError, match="t must lie in 2..10"):
        dm.diffusion_term(x, x, 1, x, s)
    with pytest.raises(ValueError, match="binary"):
        dm.decoder_log_prob(torch.zeros(2, 4), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        dm.decoder_log_prob(torch.ones(2, 4), torch.zeros(2, 4), 0.0)


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): evaluate both sides on a grid (1-D)."""
    s = dm.linear_schedule(T=100, beta_T=0.05)
    x0, xt = torch.tensor([[0.8]], dtype=torch.float64), torch.tensor([[0.2]], dtype=torch.float64)
    for t in (2, 10, 100):
        mean, var = dm.posterior(x0, xt, t, s)
        grid = torch.linspace(-4, 4, 20_001, dtype=torch.float64)
        ab_prev, a_t = float(s.alpha_bar[t - 2]), float(s.alphas[t - 1])
        log_joint = (Normal(math.sqrt(a_t) * grid, math.sqrt(1 - a_t)).log_prob(xt[0, 0])
                     + Normal(math.sqrt(ab_prev) * x0[0, 0], math.sqrt(1 - ab_prev)).log_prob(grid))
        p = torch.softmax(log_joint, 0)
        m_num = (p * grid).sum()
        v_num = (p * (grid - m_num) ** 2).sum()
        assert torch.isclose(mean[0, 0], m_num, rtol=1e-6) and torch.isclose(var[0], v_num, rtol=1e-4)
        assert torch.isclose(var[0], s.posterior_var[t - 1])
    mean, var = dm.posterior(x0, xt, 1, s)  # at t = 1 the posterior is the point x_0
    assert float(var[0]) == 0.0 and torch.allclose(mean, x0)


def test_gaussian_kl_and_the_elbo_terms_against_torch_distributions():
    g = torch.Generator().manual_seed(3)
    mq, mp = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 1, 4, 4, generator=g,
                                                                                  dtype=torch.float64)
    vq, vp = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    oracle = kl_divergence(Independent(Normal(mq, vq.sqrt().view(5, 1, 1, 1).expand_as(mq)), 3),
                           Independent(Normal(mp, vp.sqrt().view(5, 1, 1, 1).expand_as(mp)), 3))
    assert torch.allclose(dm.gaussian_kl(mq, vq, mp, vp), oracle)
    with pytest.raises(ValueError, match="positive"):
        dm.gaussian_kl(mq, torch.zeros(5, dtype=torch.float64), mp, vp)

    s = dm.linear_schedule()
    x0 = torch.randint(0, 2, (5, 1, 4, 4), generator=g).double() * 2 - 1
    ab = s.alpha_bar[-1]
    oracle = kl_divergence(Independent(Normal(ab.sqrt() * x0, (1 - ab).sqrt().expand_as(x0)), 3),
                           Independent(Normal(torch.zeros_like(x0), torch.ones_like(x0)), 3))
    assert torch.allclose(dm.prior_term(x0, s), oracle)

    t = torch.tensor([2, 3, 50, 500, 1000])
    xt = dm.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64), s)
    x0_hat = torch.tanh(torch.randn(x0.shape, generator=g, dtype=torch.float64))
    mean_q, var = dm.posterior(x0, xt, t, s)
    mean_p, _ = dm.posterior(x0_hat, xt, t, s)
    sd = var.sqrt().view(5, 1, 1, 1).expand_as(x0)
    oracle = kl_divergence(Independent(Normal(mean_q, sd), 3), Independent(Normal(mean_p, sd), 3))
    assert torch.allclose(dm.diffusion_term(x0, xt, t, x0_hat, s), oracle)
    # the same KL in the ε form of Ho et al.: ᾱ_{t-1} β_t² / (2 β̃_t (1 - ᾱ_t)²) ‖x0 - x̂0‖²
    ab_t, ab_p, b = s.alpha_bar[t - 1], s.alpha_bar[t - 2], s.betas[t - 1]
    w = ab_p * b**2 / (2 * s.posterior_var[t - 1] * (1 - ab_t) ** 2)
    assert torch.allclose(dm.diffusion_term(x0, xt, t, x0_hat, s), w * (x0 - x0_hat).pow(2).flatten(1).sum(1))


def test_decoder_probabilities_of_plus_and_minus_one_sum_to_one():
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64) * 0.02
    ones = torch.ones_like(mean)
    # one pixel at a time: p(+1) + p(-1) = 1
    lp_plus = torch.special.log_ndtr(mean / 0.01)
    p_plus = dm.decoder_log_prob(ones, mean, 0.01)
    p_minus = dm.decoder_log_prob(-ones, mean, 0.01)
    assert torch.allclose(p_plus, lp_plus.flatten(1).sum(1))
    per_pixel = lambda x: torch.special.log_ndtr(x * mean / 0.01).exp()  # noqa: E731
    assert torch.allclose(per_pixel(ones) + per_pixel(-ones), torch.ones_like(mean))
    # the bin (0, ∞) of N(mean, σ²) for +1, as Ho et al.'s discretised decoder with two levels
    assert torch.allclose(p_minus, Normal(mean, 0.01).cdf(torch.zeros_like(mean)).log().flatten(1).sum(1))
    far = dm.decoder_log_prob(ones, -ones, 0.01)  # a confident wrong decoder: large but finite
    assert torch.isfinite(far).all() and (far < -1000).all()


def _tiny(parameterisation="binary", T=20):
    torch.manual_seed(0)
    return lb.models.build({"arch": "ddpm", "hidden": [16], "time_dim": 8, "T": T, "beta_T": 0.2,
                            "parameterisation": parameterisation})


@pytest.mark.parametrize("parameterisation", ["binary", "eps"])
def test_ddpm_loss_equals_an_independent_computation(parameterisation):
    m = _tiny(parameterisation)
    x = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    out = m.loss(x, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(1, 21, (6,), generator=g)
    eps = torch.randn(6, 1, 28, 28, generator=g)
    x0 = 2 * x - 1
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.2, 20, dtype=torch.float64), 0)[t - 1].float().view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    net = m._net(xt, t)
    if parameterisation == "eps":
        eps_hat = net
    else:
        x0_hat = torch.tanh(net + ab.sqrt() * xt / (1 - ab))
        eps_hat = (xt - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
    assert torch.allclose(out["loss"], ((eps - eps_hat) ** 2).mean(), rtol=1e-5)


def test_ddpm_spec_round_trip_and_errors():
    m = _tiny()
    assert lb.models.spec_of(lb.models.build(lb.models.spec_of(m))) == lb.models.spec_of(m)
    with pytest.raises(ValueError, match="parameterisation"):
        lb.models.build({"arch": "ddpm", "parameterisation": "v"})
    with pytest.raises(ValueError, match="hidden"):
        lb.models.build({"arch": "ddpm", "hidden": []})


def test_binary_parameterisation_is_the_posterior_mean_of_a_lone_pixel():
    """With h = 0 (no context), x̂0 = E[x0 | x_t] for x0 = ±1 with probability ½: tanh(√ᾱ x_t / (1 - ᾱ))."""
    m = _tiny()
    for p in m.parameters():
        torch.nn.init.zeros_(p)
    xt = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 15])
    _, x0_hat = m.predict(xt, t)
    s = m.schedule
    ab = s.alpha_bar[t - 1].view(-1, 1, 1, 1)
    lik = lambda x0: Normal(ab.sqrt() * x0, (1 - ab).sqrt()).log_prob(xt.double())  # noqa: E731
    post_plus = torch.sigmoid(lik(1.0) - lik(-1.0))
    assert torch.allclose(x0_hat.double(), 2 * post_plus - 1, atol=1e-5)


def test_sampler_is_seeded_and_gives_probabilities():
    m = _tiny()
    a = m.sample(3, generator=torch.Generator().manual_seed(0))
    b = m.sample(3, generator=torch.Generator().manual_seed(0))
    c = m.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 1, 28, 28) and bool(((a >= 0) & (a <= 1)).all())
    short, traj = m.sample(2, steps=5, generator=torch.Generator().manual_seed(0), trajectory=[20, 1])
    assert short.shape == (2, 1, 28, 28) and set(traj) == {20, 1}
    with pytest.raises(ValueError, match="steps"):
        m.sample(2, steps=1)


def test_negative_elbo_is_the_sum_of_its_terms_and_reproducible():
    m = _tiny()
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    r = dm.negative_elbo(m, x, seed=0, batch_size=3)
    assert set(r) == {"prior", "diffusion", "decoder", "total"}
    assert torch.allclose(r["total"], r["prior"] + r["diffusion"] + r["decoder"])
    assert (r["prior"] >= 0).all() and (r["diffusion"] >= 0).all() and (r["decoder"] >= 0).all()
    again = dm.negative_elbo(m, x, seed=0, batch_size=4)  # batching does not change the draws' law, only order
    assert torch.allclose(again["prior"], r["prior"])
    # an independent sum over the T terms for one image, with the helpers
    s, x0 = m.schedule, 2 * x[:1].double() - 1
    g = torch.Generator().manual_seed(0)
    total = dm.prior_term(x0, s)
    with torch.no_grad():
        for t in range(2, s.T + 1):
            xt = dm.q_sample(x0.float(), t, torch.randn(1, 1, 28, 28, generator=g), s)
            total += dm.diffusion_term(x0, xt.double(), t, m.predict(xt, torch.tensor([t]))[1].double(), s)
        x1 = dm.q_sample(x0.float(), 1, torch.randn(1, 1, 28, 28, generator=g), s)
        total -= dm.decoder_log_prob(x0, m.decoder_mean(x1).double(), math.sqrt(m.beta_1))
    single = dm.negative_elbo(m, x[:1], seed=0)
    assert torch.allclose(single["total"].double(), total, rtol=1e-4)
    with pytest.raises(ValueError, match="binary"):
        dm.negative_elbo(m, x * 0.5)
    with pytest.raises(TypeError):
        dm.negative_elbo(torch.nn.Linear(2, 2), x)


def test_stratified_terms_are_an_unbiased_estimate_of_the_full_sum():
    m = _tiny()
    x = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    full = torch.stack([dm.negative_elbo(m, x, seed=s)["diffusion"] for s in range(60)]).double()
    strat = torch.stack([dm.negative_elbo(m, x, seed=s, n_t=4)["diffusion"] for s in range(60)]).double()
    se = (full.var(0) / 60 + strat.var(0) / 60).sqrt()
    assert ((full.mean(0) - strat.mean(0)).abs() < 4 * se + 1e-6).all()
    with pytest.raises(ValueError, match="n_t"):
        dm.negative_elbo(m, x, n_t=20)

"""latentbook.vq against oracles: brute-force nearest codes (scipy), autograd against the definitions of the
straight-through estimator and the two code losses, scikit-learn's k-means step, scipy's entropy, and
enumeration of every code sequence for the priors."""

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
from sklearn.cluster import KMeans

from latentbook import models, train, vq


def _randn(seed, *shape, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# quantisation


def test_quantize_is_the_brute_force_argmin():
    z, cb = _randn(0, 4, 6, 3), _randn(1, 10, 3)
    z_q, idx = vq.quantize(z, cb)
    d = scipy.spatial.distance.cdist(z.reshape(-1, 3).numpy(), cb.numpy(), "sqeuclidean")
    np.testing.assert_array_equal(idx.reshape(-1).numpy(), d.argmin(1))
    assert idx.shape == (4, 6) and idx.dtype == torch.int64
    assert torch.equal(z_q, cb[idx])


def test_quantize_breaks_ties_toward_the_lowest_index():
    cb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # code 3 repeats code 0
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 0.2]])
    _, idx = vq.quantize(z, cb)
    d = scipy.spatial.distance.cdist(z.numpy(), cb.numpy(), "sqeuclidean")
    np.testing.assert_array_equal(idx.numpy(), d.argmin(1))  # numpy's argmin: the first minimum
    assert idx.tolist() == [0, 0, 0, 2]


def test_quantize_refuses_nonsense():
    cb = _randn(0, 4, 3)
    with pytest.raises(ValueError, match="K >= 2"):
        vq.quantize(_randn(1, 5, 3), cb[:1])
    with pytest.raises(ValueError, match="z_e"):
        vq.quantize(_randn(1, 5, 2), cb)
    with pytest.raises(ValueError, match="codebook"):
        vq.quantize(_randn(1, 5, 3), cb[0])


def test_straight_through_passes_the_gradient_unchanged():
    z_e = _randn(0, 5, 4, 3).requires_grad_()
    cb = _randn(1, 8, 3)
    z_q, _ = vq.quantize(z_e, cb)
    out = vq.straight_through(z_e, z_q)
    assert torch.allclose(out, z_q, rtol=0, atol=1e-12)  # forward: the quantised value (up to rounding)
    w = _randn(2, 5, 4, 3)
    loss = (w * torch.sin(out)).sum()  # any function of the decoder's input
    (g_e,) = torch.autograd.grad(loss, z_e)
    # the definition: dL/dz_e = dL/dz_q evaluated at z_q
    zq_leaf = z_q.detach().requires_grad_()
    (g_q,) = torch.autograd.grad((w * torch.sin(zq_leaf)).sum(), zq_leaf)
    assert torch.allclose(g_e, g_q)
    # the Jacobian of the estimator is the identity
    x = _randn(3, 3).requires_grad_()
    q = _randn(4, 3)
    jac = torch.autograd.functional.jacobian(lambda a: vq.straight_through(a, q), x)
    assert torch.allclose(jac, torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="one shape"):
        vq.straight_through(x, q[:2])


def test_codebook_and_commitment_gradients_go_where_their_definitions_say():
    z_e = _randn(0, 6, 3).requires_grad_()
    cb = _randn(1, 4, 3).requires_grad_()
    z_q, idx = vq.quantize(z_e, cb)
    # codebook loss: no gradient to the encoder; d/de_k = -2 Σ_{i: c_i = k} (z_i - e_k)
    g_e, g_cb = torch.autograd.grad(vq.codebook_loss(z_e, z_q).sum(), (z_e, cb), allow_unused=True)
    assert g_e is None or torch.count_nonzero(g_e) == 0
    want = torch.zeros_like(cb)
    for i, k in enumerate(idx.tolist()):
        want[k] -= 2 * (z_e[i] - cb[k]).detach()
    assert torch.allclose(g_cb, want)
    # commitment loss: no gradient to the codebook; d/dz_i = 2 β (z_i - e_{c_i})
    z_q, _ = vq.quantize(z_e, cb)
    g_e, g_cb = torch.autograd.grad(vq.commitment_loss(z_e, z_q, 0.25).sum(), (z_e, cb), allow_unused=True)
    assert g_cb is None or torch.count_nonzero(g_cb) == 0
    assert torch.allclose(g_e, 2 * 0.25 * (z_e - cb[idx]).detach())
    with pytest.raises(ValueError, match="beta"):
        vq.commitment_loss(z_e, z_q, -1.0)


def test_a_gradient_step_on_the_codebook_loss_is_a_kmeans_step():
    x = _randn(0, 200, 2)
    cb = _randn(1, 5, 2) * 2
    leaf = cb.clone().requires_grad_()
    z_q, idx = vq.quantize(x, leaf)
    (g,) = torch.autograd.grad(vq.codebook_loss(x, z_q).sum(), leaf)
    n = torch.bincount(idx, minlength=5).double()
    step = cb - g / (2 * n.clamp_min(1))[:, None]  # step size 1 / (2 n_k)
    assert torch.allclose(step, vq.kmeans_step(x, cb))


def test_kmeans_step_equals_scikit_learn_and_numpy():
    x = _randn(0, 300, 3)
    init = x[:6].clone()
    new = vq.kmeans_step(x, init)
    km = KMeans(n_clusters=6, init=init.numpy(), n_init=1, max_iter=1, algorithm="lloyd").fit(x.numpy())
    # scikit-learn reports the centres after its one Lloyd iteration
    np.testing.assert_allclose(new.numpy(), km.cluster_centers_, atol=1e-10)
    # numpy by hand, with an unused code that must stay put
    init2 = torch.cat([init, torch.full((1, 3), 50.0, dtype=torch.float64)])
    new2 = vq.kmeans_step(x, init2).numpy()
    lab = scipy.spatial.distance.cdist(x.numpy(), init2.numpy(), "sqeuclidean").argmin(1)
    for k in range(7):
        want = x.numpy()[lab == k].mean(0) if (lab == k).any() else init2[k].numpy()
        np.testing.assert_allclose(new2[k], want, atol=1e-12)


def test_kmeans_is_seeded_and_does_not_increase_the_distortion():
    x = torch.cat([_randn(0, 100, 2) + 5, _randn(1, 100, 2) - 5, _randn(2, 100, 2)])
    a = vq.kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    b = vq.kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    sse = lambda cb: scipy.spatial.distance.cdist(x.numpy(), cb.numpy(), "sqeuclidean").min(1).sum()
    assert sse(a) <= sse(vq.kmeans(x, 3, iters=0, generator=torch.Generator().manual_seed(0))) + 1e-9
    assert sorted(round(v) for v in a[:, 0].tolist()) == [-5, 0, 5]
    with pytest.raises(ValueError, match="at least K"):
        vq.kmeans(x[:2], 3)


# ---------------------------------------------------------------------------------------------
# usage


def test_perplexity_is_exp_of_scipy_entropy_and_dead_codes_are_counted():
    idx = torch.tensor([[0, 1, 1, 3], [3, 3, 3, 0]])
    counts = np.bincount(idx.reshape(-1).numpy(), minlength=6)
    assert math.isclose(vq.perplexity(idx, 6), math.exp(scipy.stats.entropy(counts)), rel_tol=1e-12)
    assert vq.dead_codes(idx, 6) == 3
    assert vq.code_usage(idx, 6).tolist() == counts.tolist()
    assert math.isclose(vq.perplexity(torch.arange(8), 8), 8.0)
    assert math.isclose(vq.perplexity(torch.zeros(5, dtype=torch.long), 8), 1.0)
    with pytest.raises(ValueError, match="K"):
        vq.perplexity(idx, 1)
    with pytest.raises(ValueError, match="0..2"):
        vq.perplexity(idx, 3)
    with pytest.raises(ValueError, match="integer"):
        vq.dead_codes(idx.double(), 6)


# ---------------------------------------------------------------------------------------------
# the model


def test_vqvae_spec_round_trip_shapes_and_loss_terms():
    torch.manual_seed(0)
    model = models.build({"arch": "vq_vae", "n_codes": 3, "codebook_size": 5, "code_dim": 2, "hidden": [16]})
    spec = models.spec_of(model)
    assert spec == {"arch": "vq_vae", "n_codes": 3, "codebook_size": 5, "code_dim": 2, "hidden": [16],
                    "init": "random"}
    assert models.spec_of(models.build(spec)) == spec
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert model.encode_continuous(x).shape == (7, 3, 2)
    idx = model.codes(x)
    assert idx.shape == (7, 3) and int(idx.max()) < 5
    assert torch.equal(model.encode(x), model.codebook[idx])
    assert torch.allclose(model(x), model.decode_codes(idx))
    out = model.loss(x)
    assert set(out) == {"loss", "recon", "codebook", "commitment", "perplexity"}
    assert torch.allclose(out["loss"], out["recon"] + out["codebook"] + out["commitment"])
    assert torch.allclose(out["recon"], model.recon_nats(x).mean())
    assert torch.allclose(out["commitment"], 0.25 * out["codebook"])  # same distance, weight β
    assert math.isclose(out["perplexity"].item(), vq.perplexity(idx, 5), rel_tol=1e-6)
    assert model.bits == pytest.approx(3 * math.log2(5))
    with pytest.raises(ValueError, match="codebook size"):
        models.build({"arch": "vq_vae", "codebook_size": 1})
    with pytest.raises(ValueError, match="init"):
        models.build({"arch": "vq_vae", "init": "zeros"})
    with pytest.raises(ValueError, match=r"indices must be \[B, m\]"):
        model.decode_codes(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="0..4"):
        model.decode_codes(torch.full((2, 3), 5))


def test_the_encoder_gets_the_decoders_gradient_through_the_model():
    torch.manual_seed(0)
    model = models.build({"arch": "vq_vae", "n_codes": 2, "codebook_size": 4, "code_dim": 3, "hidden": [8]}).double()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64).round()
    z_e = model.encode_continuous(x)
    z_e.retain_grad()
    z_q, _ = vq.quantize(z_e, model.codebook)
    z_in = vq.straight_through(z_e, z_q)
    z_in.retain_grad()
    recon = -model.decode_logits(z_in).sigmoid().clamp(1e-9, 1 - 1e-9).log().mul(x).sum()
    recon.backward()
    assert torch.allclose(z_e.grad, z_in.grad)


def test_kmeans_init_happens_once_on_the_first_training_batch():
    torch.manual_seed(0)
    model = models.build({"arch": "vq_vae", "n_codes": 4, "codebook_size": 6, "code_dim": 2, "hidden": [8],
                          "init": "kmeans"})
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = model.codebook.detach().clone()
    model.eval()
    model.loss(x)  # evaluation does not initialise
    assert torch.equal(model.codebook, before) and not bool(model.initialised)
    model.train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        want = vq.kmeans(model.encode_continuous(x).reshape(-1, 2), 6, generator=torch.Generator().manual_seed(3))
    model.loss(x, generator=g)
    assert bool(model.initialised) and torch.allclose(model.codebook, want)
    after = model.codebook.detach().clone()
    model.loss(x, generator=g)
    assert torch.equal(model.codebook, after)  # not again
    # the flag travels with the weights
    twin = models.build(models.spec_of(model))
    twin.load_state_dict(model.state_dict())
    assert bool(twin.initialised)


def test_the_trainer_trains_a_vqvae():
    torch.manual_seed(0)
    model = models.build({"arch": "vq_vae", "n_codes": 2, "codebook_size": 4, "code_dim": 2, "hidden": [16],
                          "init": "kmeans"})
    protos = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = protos[torch.arange(64) % 4]  # four distinct binary images: something to learn
    h = train.fit(model, x, epochs=4, batch_size=16, lr=1e-2, progress=False)
    assert h["recon"][-1] < 0.9 * h["recon"][0] and len(h["perplexity"]) == 4


# ---------------------------------------------------------------------------------------------
# priors


def test_categorical_prior_is_the_smoothed_frequency_and_normalised():
    codes = torch.tensor([[0, 1], [0, 2], [1, 2], [0, 2]])
    p = vq.CategoricalPrior.fit(codes, 3, alpha=0.0)
    assert torch.allclose(p.probs, torch.tensor([[3, 1, 0], [0, 1, 3]], dtype=torch.float64) / 4)
    p = vq.CategoricalPrior.fit(codes, 3, alpha=1.0)
    assert torch.allclose(p.probs[0], torch.tensor([4, 2, 1], dtype=torch.float64) / 7)
    every = vq.all_codes(2, 3)
    assert every.shape == (9, 2)
    assert math.isclose(p.log_prob(every).exp().sum().item(), 1.0, rel_tol=1e-12)
    s = p.sample(20_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(s[:, 0], minlength=3).double() / 20_000
    assert torch.allclose(freq, p.probs[0], atol=0.015)
    with pytest.raises(ValueError, match="codes must be"):
        p.log_prob(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        vq.CategoricalPrior.fit(codes, 3, alpha=-1.0)


def _trained_ar(m=3, K=3, seed=0):
    torch.manual_seed(seed)
    prior = vq.ARPrior(m, K, hidden=(32,)).double()
    # data with dependence between positions: c1 = c0, c2 = (c0 + 1) mod K, with noise
    g = torch.Generator().manual_seed(seed)
    c0 = torch.randint(K, (2000,), generator=g)
    flip = torch.rand(2000, generator=g) < 0.2
    codes = torch.stack([c0, torch.where(flip, torch.randint(K, (2000,), generator=g), c0), (c0 + 1) % K], 1)
    vq.fit_ar_prior(prior, codes, epochs=5, batch_size=100, lr=3e-2)
    return prior, codes


def test_ar_prior_is_autoregressive_and_normalised():
    prior, codes = _trained_ar()
    every = vq.all_codes(3, 3)
    with torch.no_grad():
        total = prior.log_prob(every).exp().sum().item()
    assert math.isclose(total, 1.0, rel_tol=1e-9)
    # output i depends only on inputs < i: changing c_2 changes no logits, c_1 only position 2's
    a = torch.tensor([[0, 1, 2]])
    with torch.no_grad():
        la, lb_ = prior.logits(a), prior.logits(torch.tensor([[0, 2, 0]]))
    assert torch.equal(la[:, :2], lb_[:, :2]) and not torch.equal(la[:, 2], lb_[:, 2])
    # it learned the dependence: better than independent positions on its training data
    cat = vq.CategoricalPrior.fit(codes, 3, alpha=1.0)
    with torch.no_grad():
        assert prior.log_prob(codes).mean() > cat.log_prob(codes).mean() + 0.3


def test_ar_prior_log_prob_matches_its_samplers_frequencies():
    prior, _ = _trained_ar()
    n = 40_000
    s = prior.sample(n, torch.Generator().manual_seed(1))
    every = vq.all_codes(3, 3)
    with torch.no_grad():
        p = prior.log_prob(every).exp()
    key = (s * torch.tensor([9, 3, 1])).sum(1)
    freq = torch.bincount(key, minlength=27).double() / n
    assert torch.allclose(freq, p, atol=4 * math.sqrt(0.25 / n))


def test_ar_prior_refuses_nonsense():
    with pytest.raises(ValueError, match="m >= 2"):
        vq.ARPrior(1, 4)
    with pytest.raises(ValueError, match="K"):
        vq.ARPrior(3, 1)
    prior = vq.ARPrior(3, 4, hidden=(8,))
    with pytest.raises(ValueError, match="0..3"):
        prior.log_prob(torch.tensor([[0, 1, 4]]))
    with pytest.raises(ValueError, match="m = 3"):
        prior.log_prob(torch.tensor([[0, 1]]))


def test_ar_prior_cached_is_stored_and_keyed_by_the_vqvae(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path))
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "off")
    torch.manual_seed(0)
    model = models.build({"arch": "vq_vae", "n_codes": 3, "codebook_size": 4, "code_dim": 2, "hidden": [8]})
    codes = torch.randint(4, (50, 3), generator=torch.Generator().manual_seed(0))
    a, ha = vq.ar_prior_cached(model, codes, hidden=(8,), epochs=2)
    b, hb = vq.ar_prior_cached(model, codes, hidden=(8,), epochs=2)  # loaded, not trained
    assert ha.to_dict() == hb.to_dict()
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    with torch.no_grad():
        model.codebook.add_(1.0)  # other weights: another entry
    vq.ar_prior_cached(model, codes, hidden=(8,), epochs=2)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_codes_of_batches_like_one_pass_and_restarts_revive_dead_codes():
    torch.manual_seed(0)
    model = models.build({"arch": "vq_vae", "n_codes": 2, "codebook_size": 8, "code_dim": 2, "hidden": [8],
                          "restarts": True})
    assert models.spec_of(model)["restarts"] is True
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vq.codes_of(model, x, batch_size=7), model.codes(x))
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = model.encode_continuous(x).reshape(-1, 2)
    model.loss(x, generator=g)  # usage starts at 0: every code restarts onto an encoder output of the batch
    d = scipy.spatial.distance.cdist(model.codebook.detach().numpy(), z.numpy())
    assert np.allclose(d.min(1), 0.0, atol=1e-6)
    assert bool((model.usage > 0).all())

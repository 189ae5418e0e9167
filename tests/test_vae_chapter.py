"""The helpers of the chapters "vae" and "side-by-side", against oracles: torch.distributions, closed
forms, Jensen's inequality, hand-built classifiers; and the zoo's recipes for those chapters."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from latentbook import classifier, data, evaluate, losses, models, montecarlo, store, train, zoo
from latentbook.chapter import start


def _binary(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.linspace(0.05, 0.6, 784).reshape(1, 1, 28, 28)
    return (torch.rand(n, 1, 28, 28, generator=g) < p).float()


# ---------------------------------------------------------------------------------------------
# The VAE's loss, term by term, against torch.distributions (the chapter's from-scratch cell)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_vae_loss_terms_equal_torch_distributions(beta):
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=3, hidden=(32,))
    x = _binary(16)
    terms = vae.loss(x, beta=beta, generator=torch.Generator().manual_seed(7))
    mu, logvar = vae.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    z = mu + torch.exp(0.5 * logvar) * eps  # the same reparameterised sample
    log_px_z = D.Bernoulli(logits=vae.decode_logits(z)).log_prob(x).sum((1, 2, 3))
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    kl = D.kl_divergence(q, D.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(terms["recon"], -log_px_z.mean())
    torch.testing.assert_close(terms["kl"], kl.mean())
    torch.testing.assert_close(terms["elbo"], (log_px_z - kl).mean())
    torch.testing.assert_close(terms["loss"], (-log_px_z + beta * kl).mean())


def test_gaussian_decoder_log_likelihood_equals_torch_normal():
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=(16,), likelihood="gaussian", obs_log_var=-3.0)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    z = torch.randn(4, 5, 2)
    with torch.no_grad():
        mean = vae.decode(z)  # [4, 5, 1, 28, 28]
        expected = D.Normal(mean, math.exp(-1.5)).log_prob(x.expand_as(mean)).sum((-1, -2, -3))
        torch.testing.assert_close(vae.log_px_given_z(x, z), expected, rtol=1e-5, atol=1e-3)


def test_free_bits_floor_each_dimension_in_the_loss_only():
    """free_bits = lam: the loss uses sum_j max(KL_j, lam) (KL_j the batch-mean KL of dimension j); the
    reported kl and elbo stay the true ones."""
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=4, hidden=(16,))
    x = _binary(32)
    plain = vae.loss(x, generator=torch.Generator().manual_seed(3))
    lam = 0.5
    floored = vae.loss(x, free_bits=lam, generator=torch.Generator().manual_seed(3))
    mu, logvar = vae.encode(x)
    kl_dim = (0.5 * (mu**2 + logvar.exp() - logvar - 1)).mean(0)  # [4]
    expected = plain["recon"] + kl_dim.clamp(min=lam).sum()
    torch.testing.assert_close(floored["loss"], expected)
    torch.testing.assert_close(floored["kl"], plain["kl"])
    torch.testing.assert_close(floored["elbo"], plain["elbo"])


# ---------------------------------------------------------------------------------------------
# Importance-weighted bounds for several k from one set of samples
# ---------------------------------------------------------------------------------------------


def test_grouped_log_mean_exp_by_hand():
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 8.0], [6.0, 4.0], [5.0, 5.0]]))
    out = montecarlo.grouped_log_mean_exp(log_w, 2)  # the fifth sample is left out
    torch.testing.assert_close(out, torch.log(torch.tensor([[2.0, 2.0], [4.0, 6.0]])))
    torch.testing.assert_close(montecarlo.grouped_log_mean_exp(log_w, 1), log_w)
    with pytest.raises(ValueError, match="at least k"):
        montecarlo.grouped_log_mean_exp(log_w, 6)


def _prior_matching_vae():
    """q(z|x) = p(z) = N(0, I) and a decoder that ignores z: every weight is p(x), in closed form."""
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=())
    b = torch.linspace(-2, 2, 784)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.decoder[0].bias.copy_(b)
    return vae, b


def test_iwae_bounds_exact_when_the_weights_are_constant():
    vae, b = _prior_matching_vae()
    x = _binary(13)
    exact = losses.bernoulli_log_prob(b.reshape(1, 1, 28, 28).expand_as(x), x)
    bounds = evaluate.iwae_bounds(vae, x, [1, 4, 20], batch_size=5)
    assert sorted(bounds) == [1, 4, 20]
    for k in (1, 4, 20):
        torch.testing.assert_close(bounds[k], exact, rtol=1e-6, atol=1e-4)


def test_iwae_bounds_are_ordered_and_match_the_log_weights():
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=(32,)).eval()
    x = _binary(40, seed=2)
    ks = [1, 10, 100, 1000]
    bounds = evaluate.iwae_bounds(vae, x, ks, batch_size=64, seed=3)
    for small, big in zip(ks, ks[1:]):
        assert (bounds[big] >= bounds[small] - 1e-4).all()  # per image, not only on average
    assert bounds[1000].mean() > bounds[1].mean() + 0.1
    # one batch, the same seed: the samples of montecarlo.log_weights themselves
    log_w = montecarlo.log_weights(vae.encode, vae.log_px_given_z, x, 1000,
                                   generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(bounds[1000], torch.logsumexp(log_w, 0) - math.log(1000), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bounds[1], log_w.mean(0), rtol=1e-5, atol=1e-4)
    # k = 1 estimates the ELBO (the same expectation as test_elbo; sd of the mean ~ 0.1 nats here)
    assert bounds[1].mean().item() == pytest.approx(evaluate.test_elbo(vae, x)["elbo"], abs=1.0)


def test_iwae_bounds_chunk_size_changes_the_passes_not_the_estimate(tmp_path):
    """The samples per decoder pass (chunk_size) set how the same kind of estimate is computed: with one pass per
    image the bounds are those of montecarlo.log_weights drawn that way, and agree with the default layout's within
    Monte Carlo error; a non-default chunk is a separate stored entry."""
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=(32,)).eval()
    x = _binary(20, seed=2)
    one_pass = evaluate.iwae_bounds(vae, x, [1, 500], batch_size=1, chunk_size=500, seed=3)
    gen = torch.Generator().manual_seed(3)
    first = montecarlo.log_weights(vae.encode, vae.log_px_given_z, x[:1], 500, chunk_size=500, generator=gen)
    assert one_pass[500][0].item() == pytest.approx((torch.logsumexp(first, 0) - math.log(500)).item(), abs=1e-4)
    default = evaluate.iwae_bounds(vae, x, [1, 500], seed=3)
    assert not torch.equal(one_pass[500], default[500])
    assert (one_pass[500] - default[500]).abs().mean() < 0.5
    for chunk in (128, 500, 128):
        evaluate.iwae_bounds(vae, x, [1, 500], chunk_size=chunk, seed=3, cache=True, cache_dir=tmp_path)
    chunks = sorted(e["config"]["params"].get("chunk_size", 0) for e in store.info(tmp_path).entries)
    assert chunks == [0, 500]  # the default is not in the key: entries stored before it existed keep theirs


def test_iwae_bounds_refuse_bad_ks():
    vae, _ = _prior_matching_vae()
    with pytest.raises(ValueError, match="divide"):
        evaluate.iwae_bounds(vae, _binary(3), [1, 3, 10])
    with pytest.raises(ValueError, match="positive"):
        evaluate.iwae_bounds(vae, _binary(3), [0, 10])


# ---------------------------------------------------------------------------------------------
# The judge of generated images: a classifier and its confidence
# ---------------------------------------------------------------------------------------------


class _Fixed(nn.Module):
    """A 'classifier' whose logits are a fixed linear map of the mean grey level and of pixel 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]]))

    def forward(self, x):
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat[:, 0]], 1) @ self.w.T


def test_class_probabilities_and_confidence_closed_form():
    clf = _Fixed()
    x = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    probs = evaluate.class_probabilities(clf, x, batch_size=8)
    flat = x.flatten(1)
    logits = torch.stack([4 * flat.mean(1), 4 * flat[:, 0], torch.zeros(37)], 1)
    torch.testing.assert_close(probs, torch.softmax(logits, 1))
    torch.testing.assert_close(probs.sum(1), torch.ones(37))
    conf = evaluate.classifier_confidence(clf, x, batch_size=5)
    torch.testing.assert_close(conf, probs.max(1).values)
    assert conf.min() >= 1 / 3 - 1e-6 and conf.max() <= 1
    # all-black images: logits (0, 0, 0), so every class has probability 1/3
    torch.testing.assert_close(evaluate.classifier_confidence(clf, torch.zeros(2, 1, 28, 28)), torch.full((2,), 1 / 3))
    with pytest.raises(TypeError, match="nn.Module"):
        evaluate.class_probabilities(lambda x: x, x)


def _toy_digits(n, seed=0):
    """Ten 'classes', each a bright 6x6 square at its own place, plus faint noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(10, (n,), generator=g)
    x = 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    for c in range(10):
        r, col = 2 + 8 * (c // 3), 2 + 8 * (c % 3)
        x[y == c, :, r : r + 6, col : col + 6] = 1.0
    return x, y


def test_classifier_learns_and_the_options_lower_confidence_off_the_data():
    x, y = _toy_digits(1200)
    xt, yt = _toy_digits(300, seed=1)
    torch.manual_seed(0)
    plain = classifier.build({"arch": "digit_classifier", "channels": [8, 8], "hidden": 32})
    hist = classifier.fit(plain, x, y, epochs=4, batch_size=64, lr=3e-3, device="cpu")
    assert hist.epochs == 4 and hist["accuracy"][-1] > 0.95
    assert classifier.accuracy(plain, xt, yt) > 0.95
    torch.manual_seed(0)
    judge = classifier.build({"arch": "digit_classifier", "channels": [8, 8], "hidden": 32})
    classifier.fit(judge, x, y, epochs=4, batch_size=64, lr=3e-3, device="cpu", blend=0.5, noise=0.25)
    assert classifier.accuracy(judge, xt, yt) > 0.95
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    i, j = torch.arange(0, 300, 2), torch.arange(1, 300, 2)
    keep = yt[i] != yt[j]
    blends = 0.5 * xt[i][keep] + 0.5 * xt[j][keep]
    for name, batch in (("noise", noise), ("blends", blends)):
        assert (evaluate.classifier_confidence(judge, batch).mean()
                < evaluate.classifier_confidence(plain, batch).mean() - 0.1), name
    assert evaluate.classifier_confidence(judge, noise).mean() < 0.3
    assert evaluate.classifier_confidence(judge, xt).mean() > 0.9


def test_classifier_refuses_bad_inputs():
    with pytest.raises(ValueError, match="arch"):
        classifier.build({"arch": "vae"})
    with pytest.raises(ValueError, match="unknown option"):
        classifier.build({"arch": "digit_classifier", "depth": 3})
    clf = classifier.build({"arch": "digit_classifier"})
    x, y = _toy_digits(10)
    with pytest.raises(ValueError, match="labels"):
        classifier.fit(clf, x, y[:5], epochs=1, device="cpu")
    with pytest.raises(ValueError, match="blend"):
        classifier.fit(clf, x, y, epochs=1, device="cpu", blend=-1)


def test_classifier_cache_round_trip(tmp_path):
    kw = dict(n_train=256, epochs=1, batch_size=64, device="cpu", cache_dir=tmp_path)
    a, ha = classifier.train_cached({"arch": "digit_classifier"}, **kw)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    b, hb = classifier.train_cached({"arch": "digit_classifier", "channels": [16, 32]}, **kw)  # same spec
    assert len(list(tmp_path.glob("*.pt"))) == 1 and ha.to_dict() == hb.to_dict()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    classifier.train_cached({"arch": "digit_classifier"}, blend=0.5, **kw)  # another configuration
    assert len(list(tmp_path.glob("*.pt"))) == 2
    listed = store.info(tmp_path)
    assert len(listed.entries) == 2 and "digit_classifier" in str(listed)


def test_zoo_trains_the_classifier_with_its_options(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path))
    r = zoo.recipe("digit-classifier")
    assert r.spec["arch"] == "digit_classifier" and r.loss_kwargs["blend"] > 0
    run = start("smoke", "cpu", "mnist", 0, quiet=True)
    clf, hist = zoo.get("digit-classifier", run, progress=False)
    assert isinstance(clf, classifier.DigitClassifier) and hist.epochs == run.mode.epochs(r.epochs)
    entry = store.info(tmp_path).entries
    assert len(entry) == 1 and entry[0]["config"]["recipe"]["blend"] == r.loss_kwargs["blend"]


# ---------------------------------------------------------------------------------------------
# The chapters' models
# ---------------------------------------------------------------------------------------------


def test_chapter_recipes_build_and_train_options_are_accepted():
    names = ["conv-vae-32", "vae-32-gaussian", "vae-32-anneal", "vae-32-freebits",
             *[f"vae-32-beta{b:g}" for b in (0.5, 1, 2, 4, 8)]]
    for name in names:
        r = zoo.recipe(name)
        model = models.build(r.spec)
        assert isinstance(model, models.VAE) and model.latent_dim == 32
        train._loss_call(model, dict(r.loss_kwargs))  # raises on an option the loss does not take
    assert zoo.recipe("vae-32-gaussian").binarize is None
    assert zoo.recipe("vae-32-anneal").kl_warmup_epochs > 0
    assert zoo.recipe("vae-32-freebits").loss_kwargs["free_bits"] > 0
    sweep = {b: zoo.recipe(f"vae-32-beta{b:g}") for b in (0.5, 1, 2, 4, 8)}
    assert {r.loss_kwargs["beta"] for r in sweep.values()} == {0.5, 1.0, 2.0, 4.0, 8.0}
    # one budget for the whole comparison, so the models differ only in what the chapter varies
    base = sweep[1]
    # (not the Gaussian decoder's: a one-cycle schedule made its reconstructions worse; it trains longer)
    for name in ("vae-32-anneal", "vae-32-freebits", *[f"vae-32-beta{b:g}" for b in (0.5, 2, 4, 8)]):
        r = zoo.recipe(name)
        assert (r.epochs, r.batch_size, r.lr, r.lr_schedule) == (base.epochs, base.batch_size, base.lr,
                                                                 base.lr_schedule), name


def test_train_cached_starts_from_the_seeded_build(tmp_path):
    """The side-by-side chapter rebuilds a model's initial weights as models.build(spec) under
    torch.manual_seed(seed) to look at the weight update; with a vanishing learning rate the cached
    model must still equal that build."""
    spec = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [16]}
    model, _ = train.train_cached(spec, n_train=64, epochs=1, lr=1e-12, seed=5, device="cpu",
                                  cache_dir=tmp_path, progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        init = models.build(spec)
    for (name, p), q in zip(model.state_dict().items(), init.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-9, msg=name)


def test_kl_per_dimension_equals_torch_distributions_and_sums_to_the_kl():
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=5, hidden=(16,))
    x = _binary(50)
    per_dim = evaluate.kl_per_dimension(vae, x, batch_size=7)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    expected = D.kl_divergence(q, D.Normal(0.0, 1.0)).mean(0)
    assert per_dim.shape == (5,)
    torch.testing.assert_close(per_dim, expected, rtol=1e-5, atol=1e-6)
    assert per_dim.sum().item() == pytest.approx(evaluate.test_elbo(vae, x)["kl"], rel=1e-5)


def test_likelihood_setup_is_the_chapters_and_warm_computes_it(tmp_path, monkeypatch):
    """The images and k the VAE and side-by-side chapters score are one definition (zoo); warm stores the
    bounds, so the chapters read them instead of sampling again."""
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path))
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "off")
    run = start("smoke", "cpu", "mnist", 0, quiet=True)
    x_ll, ks = zoo.likelihood_setup(run)
    x_test, _ = data.load("mnist", "test", n=run.mode.n_test)
    expected = torch.bernoulli(x_test, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_ll, expected[:50]) and ks == [1, 5, 50]
    zoo.warm(run, ["vae-2"], log=lambda *a: None)
    assert {e["config"]["kind"] for e in store.info(tmp_path).entries} == {"model", "result"}

    def refuse(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the stored bounds")

    monkeypatch.setattr(montecarlo, "log_weights", refuse)
    bounds = zoo.likelihood_bounds("vae-2", run)
    assert set(bounds) == set(ks) and bounds[50].shape == (50,)

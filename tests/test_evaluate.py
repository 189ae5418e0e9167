"""latentbook.evaluate against oracles: PCA's own methods, closed forms, scikit-learn's metrics."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from latentbook import evaluate, losses

pca_mod = pytest.importorskip("latentbook.pca", reason="latentbook/pca.py is not written yet")
from latentbook import models  # noqa: E402


@pytest.fixture(scope="module")
def images():
    """300 random "images" [300, 1, 28, 28] in [0, 1]: low-rank structure, mostly dark, like digits."""
    g = torch.Generator().manual_seed(0)
    basis = torch.rand(6, 784, generator=g)
    weights = torch.rand(300, 6, generator=g)
    x = ((weights @ basis) / 3 - 0.5).clamp(0, 1) + 0.05 * torch.rand(300, 784, generator=g)
    return x.clamp(0, 1).reshape(300, 1, 28, 28)


@pytest.fixture(scope="module")
def pca5(images):
    return pca_mod.PCA(5).fit(images)


# ---------------------------------------------------------------------------------------------
# Dispatch, batching, reconstruction error
# ---------------------------------------------------------------------------------------------


def test_pca_dispatch_equals_pca_methods(pca5, images):
    z = evaluate.encode(pca5, images, batch_size=64)
    torch.testing.assert_close(z, pca5.transform(images))
    x_hat = evaluate.reconstruct(pca5, images, batch_size=64)
    assert x_hat.shape == images.shape
    torch.testing.assert_close(x_hat, pca5.inverse_transform(pca5.transform(images)).reshape(images.shape))
    torch.testing.assert_close(evaluate.decode(pca5, z), x_hat)


def test_pca_reconstruction_is_not_clipped(pca5, images):
    x_hat = evaluate.reconstruct(pca5, images)
    # A rank-5 projection of mostly dark pixels dips below 0; the projection must be returned as is.
    assert (x_hat < 0).float().mean() > 0.01


def test_reconstruction_mse_hand_formula(pca5, images):
    x_hat = pca5.inverse_transform(pca5.transform(images)).reshape(images.shape)
    expected = ((x_hat.double() - images.double()) ** 2).mean().item()
    assert evaluate.reconstruction_mse(pca5, images, batch_size=37) == pytest.approx(expected, rel=1e-5)
    per = evaluate.per_sample_errors(pca5, images, batch_size=37)
    assert per.shape == (300,)
    torch.testing.assert_close(per, ((x_hat - images) ** 2).flatten(1).mean(1))
    torch.testing.assert_close(evaluate.anomaly_scores(pca5, images), per)


def test_pca_training_mse_is_sum_of_discarded_eigenvalues(images):
    """Eckart-Young: mean squared error on the training set = (n-1)/n * sum of the discarded variances / D."""
    full = pca_mod.PCA(None).fit(images.double())
    k = 5
    discarded = full.explained_variance_[k:].sum().item()
    n, d = images.shape[0], 784
    expected = discarded * (n - 1) / n / d
    assert evaluate.reconstruction_mse(pca_mod.PCA(k).fit(images.double()), images.double()) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("spec", [
    {"arch": "mlp_ae", "latent_dim": 3, "hidden": [16]},
    {"arch": "conv_ae", "latent_dim": 3, "channels": [4, 8]},
    {"arch": "vae", "latent_dim": 3, "hidden": [16]},
])
def test_batched_equals_unbatched(spec, images):
    torch.manual_seed(0)
    model = models.build(spec)
    model.train()  # evaluate must switch to eval mode and give the model back as it was
    x = images[:50]
    whole = evaluate.encode(model, x, batch_size=1000)
    torch.testing.assert_close(evaluate.encode(model, x, batch_size=7), whole)
    torch.testing.assert_close(evaluate.reconstruct(model, x, batch_size=7), evaluate.reconstruct(model, x, batch_size=1000))
    torch.testing.assert_close(evaluate.per_sample_errors(model, x, batch_size=7), evaluate.per_sample_errors(model, x))
    assert model.training
    with torch.no_grad():
        out = model.encode(x)
        mu = out[0] if isinstance(out, tuple) else out  # the VAE's code is its posterior mean
        torch.testing.assert_close(whole, mu)
        torch.testing.assert_close(evaluate.reconstruct(model, x), model.decode(mu))
    assert not whole.requires_grad


def test_bad_inputs_say_what_is_wrong(pca5, images):
    with pytest.raises(TypeError, match="PCA"):
        evaluate.encode(object(), images)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.reconstruct(pca5, images, batch_size=0)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate.encode(pca5, images[:0])
    with pytest.raises(ValueError, match="float images"):
        evaluate.encode(pca5, (images * 255).to(torch.uint8))


def test_psnr_closed_form():
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 0.8
    assert evaluate.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-6)  # MSE 0.01 -> 10 log10(1/0.01)
    assert evaluate.psnr(x + 0.01, x) == pytest.approx(40.0, abs=1e-4)
    assert evaluate.psnr(x + 25.5, x, data_range=255.0) == pytest.approx(20.0, abs=1e-6)
    assert evaluate.psnr(x, x) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        evaluate.psnr(x[:2], x)


# ---------------------------------------------------------------------------------------------
# VAE metrics
# ---------------------------------------------------------------------------------------------


def _binary(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < torch.linspace(0.05, 0.6, 784).reshape(1, 1, 28, 28)).float()


def test_prior_matching_vae_has_exact_log_likelihood():
    """With q(z|x) = p(z) = N(0, I) and a decoder that ignores z, every importance weight equals
    p(x) = prod_pixels Bernoulli(x; sigmoid(b)); IWAE and ELBO are then exact for any k and chunking."""
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=())
    b = torch.linspace(-2, 2, 784)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.decoder[0].bias.copy_(b)
    x = _binary(23)
    exact = losses.bernoulli_log_prob(b.reshape(1, 1, 28, 28).expand_as(x), x).double().mean().item()
    assert evaluate.log_likelihood(vae, x, k=17, batch_size=5) == pytest.approx(exact, rel=1e-6)
    assert evaluate.log_likelihood(vae, x, k=300) == pytest.approx(exact, rel=1e-6)
    terms = evaluate.test_elbo(vae, x, batch_size=4)
    assert terms["kl"] == pytest.approx(0.0, abs=1e-9)
    assert terms["elbo"] == pytest.approx(exact, rel=1e-6)
    assert terms["recon"] == pytest.approx(-exact, rel=1e-6)


def test_test_elbo_is_an_image_weighted_mean():
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=3, hidden=(16,))
    x = _binary(30)
    terms = evaluate.test_elbo(vae, x, batch_size=7)  # 7+7+7+7+2: unequal batches
    with torch.no_grad():
        mu, logvar = vae.encode(x)
    # The KL term is deterministic, so it must equal the mean over all 30 images exactly.
    assert terms["kl"] == pytest.approx(losses.gaussian_kl(mu, logvar).double().mean().item(), rel=1e-6)
    assert terms["elbo"] == pytest.approx(-(terms["recon"] + terms["kl"]), rel=1e-6)  # float32 per batch


def test_iwae_is_at_least_the_elbo_and_k1_matches_it():
    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=(32,))
    x = _binary(200, seed=3)
    elbo = evaluate.test_elbo(vae, x)["elbo"]
    assert evaluate.test_elbo(vae, x)["elbo"] == elbo  # seeded: the same number every time
    iwae1 = evaluate.log_likelihood(vae, x, k=1, seed=1)
    iwae100 = evaluate.log_likelihood(vae, x, k=100, batch_size=64)
    assert evaluate.log_likelihood(vae, x, k=100, batch_size=64) == iwae100
    assert evaluate.log_likelihood(vae, x, k=100, seed=2) != iwae100
    assert iwae100 > elbo + 0.1
    assert iwae100 > iwae1
    # k = 1 is a one-sample ELBO estimate: the same expectation (sd of the mean ~ 0.1 nats here).
    assert iwae1 == pytest.approx(elbo, abs=1.0)


def test_iwae_bounds_cached_once_then_loaded(tmp_path, monkeypatch):
    """cache=True: the same numbers as computing, stored once; then loaded without computing; a damaged
    entry is recomputed with a warning; other weights, images or arguments get their own entry."""
    from latentbook import montecarlo, store

    torch.manual_seed(0)
    vae = models.VAE(latent_dim=2, hidden=(32,))
    x = _binary(40, seed=5)
    fresh = evaluate.iwae_bounds(vae, x, [1, 10], seed=3)
    cached = evaluate.iwae_bounds(vae, x, [1, 10], seed=3, cache=True, cache_dir=tmp_path)
    for k in (1, 10):
        assert torch.equal(fresh[k], cached[k])
    entries = store.info(tmp_path).entries
    assert len(entries) == 1 and entries[0]["config"]["result"] == "iwae_bounds"

    def refuse(*args, **kwargs):
        raise AssertionError("computed again instead of loading the cached result")

    with monkeypatch.context() as m:
        m.setattr(montecarlo, "log_weights", refuse)
        again = evaluate.iwae_bounds(vae, x, [10, 1], seed=3, cache=True, cache_dir=tmp_path)
    assert torch.equal(again[10], fresh[10])
    # a different seed, other images or other weights are new entries
    evaluate.iwae_bounds(vae, x, [1, 10], seed=4, cache=True, cache_dir=tmp_path)
    evaluate.iwae_bounds(vae, x[:20], [1, 10], seed=3, cache=True, cache_dir=tmp_path)
    with torch.no_grad():
        vae.decoder[0].bias.add_(0.1)
    evaluate.iwae_bounds(vae, x, [1, 10], seed=3, cache=True, cache_dir=tmp_path)
    assert len(store.info(tmp_path).entries) == 4
    # damage every entry: each is recomputed (with a warning), not trusted
    for pt in tmp_path.glob("*.pt"):
        pt.write_bytes(pt.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="unusable"):
        redone = evaluate.iwae_bounds(vae, x, [1, 10], seed=3, cache=True, cache_dir=tmp_path)
    assert torch.isfinite(redone[10]).all()
    store.clear(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    with pytest.raises(ValueError, match="seed"):
        evaluate.iwae_bounds(vae, x, [1], seed=None, cache=True, cache_dir=tmp_path)


def test_active_units_counts_planted_variance():
    """Plant the encoder: mu_u = s_u * x_u for pixel u, so Var_x(mu_u) = s_u^2 Var(x_u)."""
    vae = models.VAE(latent_dim=4, hidden=())
    scales = torch.tensor([3.0, 0.5, 0.25, 0.0])
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.encoder[1].weight[torch.arange(4), torch.arange(4)] = scales  # rows 0..3 are mu
    x = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    count, var = evaluate.active_units(vae, x, batch_size=300)
    expected = scales**2 * x.reshape(2000, -1)[:, :4].var(0)  # ~ [0.75, 0.021, 0.0052, 0]
    torch.testing.assert_close(var, expected, rtol=1e-4, atol=1e-7)
    assert count == 2
    assert evaluate.active_units(vae, x, threshold=0.001)[0] == 3


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------


MEANS = np.random.default_rng(0).normal(size=(10, 8)) * 6.0  # ten well separated class centres


def _clusters(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    return MEANS[y] + rng.normal(size=(n, 8)), y


def test_linear_probe_separable_and_random():
    xtr, ytr = _clusters(2000, seed=1)
    xte, yte = _clusters(1000, seed=2)
    assert evaluate.linear_probe(torch.tensor(xtr), torch.tensor(ytr), xte, yte) >= 0.99
    assert evaluate.linear_probe(xtr, ytr, xte, yte, n_labels=50) >= 0.95
    noise = np.random.default_rng(3).normal(size=(3000, 8))  # codes that carry no label information
    acc = evaluate.linear_probe(noise[:2000], ytr, noise[2000:], yte)
    assert 0.06 <= acc <= 0.14  # chance is 0.1; sd of the accuracy over 1000 points ~ 0.01


def test_balanced_subset_and_probe_errors():
    y = np.repeat(np.arange(10), 30)
    idx = evaluate._balanced_subset(y, 53, seed=0)
    counts = np.bincount(y[idx], minlength=10)
    assert counts.sum() == 53 and counts.min() == 5 and counts.max() == 6 and len(set(idx)) == 53
    assert not np.array_equal(idx, evaluate._balanced_subset(y, 53, seed=1))
    x = np.random.default_rng(0).normal(size=(300, 4))
    with pytest.raises(ValueError, match="fewer than the 10 classes"):
        evaluate.linear_probe(x, y, x, y, n_labels=5)
    with pytest.raises(ValueError, match="only 30"):
        evaluate.linear_probe(x, y, x, y, n_labels=320)
    with pytest.raises(ValueError, match="features"):
        evaluate.linear_probe(x, y, x[:, :3], y)


# ---------------------------------------------------------------------------------------------
# Anomaly detection
# ---------------------------------------------------------------------------------------------


def _auc_cases():
    rng = np.random.default_rng(0)
    yield rng.normal(size=500), rng.normal(0.7, 1.0, size=300)  # continuous
    yield rng.integers(0, 5, 400).astype(float), rng.integers(1, 6, 250).astype(float)  # many ties
    yield np.zeros(10), np.zeros(7)  # all tied: 0.5
    yield np.arange(5.0), np.arange(5.0) + 10  # separated: 1.0
    yield np.arange(5.0) + 10, np.arange(5.0)  # reversed: 0.0


@pytest.mark.parametrize("normal, anomalous", list(_auc_cases()))
def test_roc_auc_equals_sklearn(normal, anomalous):
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    expected = roc_auc_score(y, np.r_[normal, anomalous])
    assert evaluate.roc_auc(normal, anomalous) == pytest.approx(expected, abs=1e-12)
    assert evaluate.roc_auc(torch.tensor(normal), torch.tensor(anomalous)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 1.3, 99.0])
def test_detection_report_equals_sklearn(threshold):
    rng = np.random.default_rng(1)
    normal, anomalous = rng.normal(size=400), rng.normal(1.0, 1.0, size=100)
    normal[:20] = 0.5  # ties at a threshold: "score > threshold" flags none of them
    report = evaluate.detection_report(torch.tensor(normal), anomalous, threshold)
    y = np.r_[np.zeros(400), np.ones(100)]
    pred = np.r_[normal, anomalous] > threshold
    assert report["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
    assert report["recall"] == pytest.approx(recall_score(y, pred, zero_division=0))
    assert report["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
    assert report["roc_auc"] == pytest.approx(roc_auc_score(y, np.r_[normal, anomalous]))
    assert report["threshold"] == threshold


def test_threshold_at_percentile():
    scores = torch.rand(1001, generator=torch.Generator().manual_seed(0))
    t = evaluate.threshold_at_percentile(scores, 95)
    assert t == pytest.approx(np.percentile(scores.numpy(), 95))
    assert (scores > t).float().mean().item() == pytest.approx(0.05, abs=0.001)
    assert evaluate.threshold_at_percentile(scores, 100) == pytest.approx(scores.max().item())
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        evaluate.threshold_at_percentile(scores, 0.95 * 200)
    with pytest.raises(ValueError, match="NaN"):
        evaluate.threshold_at_percentile(torch.tensor([1.0, float("nan")]))


def test_anomalies_score_higher_under_pca(pca5, images):
    """A PCA fitted on structured images reconstructs them better than pure noise: AUC near 1."""
    noise = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    normal = evaluate.anomaly_scores(pca5, images)
    anomalous = evaluate.anomaly_scores(pca5, noise)
    report = evaluate.detection_report(normal, anomalous, evaluate.threshold_at_percentile(normal, 95))
    assert report["roc_auc"] > 0.99 and report["recall"] > 0.95

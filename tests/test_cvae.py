"""The conditional VAE and the helpers of the chapter "conditional-vae", against oracles:
torch.distributions, Jensen's inequality, a hand-set decoder, numpy brute force; and the zoo's recipes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D

from latentbook import evaluate, models, train, zoo


def _binary(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.linspace(0.05, 0.6, 784).reshape(1, 1, 28, 28)
    return (torch.rand(n, 1, 28, 28, generator=g) < p).float()


def _labels(n, seed=0):
    return torch.randint(10, (n,), generator=torch.Generator().manual_seed(seed))


def _cvae(d=3, hidden=(32,), seed=0):
    torch.manual_seed(seed)
    return models.ConditionalVAE(latent_dim=d, hidden=hidden)


# ---------------------------------------------------------------------------------------------
# The loss against torch.distributions, with the label concatenated by hand
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_loss_equals_torch_distributions_with_a_one_hot_label(beta):
    cvae = _cvae()
    x, y = _binary(16), _labels(16)
    terms = cvae.loss(x, y=y, beta=beta, generator=torch.Generator().manual_seed(7))
    onehot = F.one_hot(y, 10).float()
    # The networks by hand: the label is a one-hot vector appended to each network's input.
    mu, logvar = cvae.encoder(torch.cat([x.flatten(1), onehot], 1)).chunk(2, dim=1)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    z = mu + torch.exp(0.5 * logvar) * eps  # the same reparameterised sample
    logits = cvae.decoder(torch.cat([z, onehot], 1))
    log_px_z = D.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3))
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    kl = D.kl_divergence(q, D.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(terms["recon"], -log_px_z.mean())
    torch.testing.assert_close(terms["kl"], kl.mean())
    torch.testing.assert_close(terms["elbo"], (log_px_z - kl).mean())
    torch.testing.assert_close(terms["loss"], (-log_px_z + beta * kl).mean())


def test_encoder_and_decoder_sizes():
    cvae = _cvae(d=5, hidden=(64, 32))
    assert cvae.encoder[0].in_features == 784 + 10 and cvae.encoder[-1].out_features == 2 * 5
    assert cvae.decoder[0].in_features == 5 + 10 and cvae.decoder[-2].out_features == 784
    mu, logvar = cvae.encode(_binary(4), _labels(4))
    assert mu.shape == logvar.shape == (4, 5)
    assert cvae.decode(torch.zeros(4, 5), _labels(4)).shape == (4, 1, 28, 28)


# ---------------------------------------------------------------------------------------------
# The label really conditions
# ---------------------------------------------------------------------------------------------


def test_the_decoder_output_depends_on_the_label_and_only_through_its_columns():
    cvae = _cvae()
    z = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = cvae.decode(z, torch.zeros(10, dtype=torch.long))
        b = cvae.decode(z, torch.full((10,), 7))
        assert (a - b).abs().max() > 1e-3  # a different label, a different image
        # With equal weights in every label's column, the one-hot adds the same vector whatever the
        # label: the output cannot depend on it.
        first = cvae.decoder[0]
        first.weight[:, 3:] = first.weight[:, 3:4]
        a = cvae.decode(z, torch.zeros(10, dtype=torch.long))
        b = cvae.decode(z, torch.arange(10))
        torch.testing.assert_close(a, b)


def test_the_encoder_output_depends_on_the_label():
    cvae = _cvae()
    x = _binary(10)
    with torch.no_grad():
        mu0, _ = cvae.encode(x, torch.zeros(10, dtype=torch.long))
        mu1, _ = cvae.encode(x, torch.ones(10, dtype=torch.long))
    assert (mu0 - mu1).abs().max() > 1e-4


def test_sample_draws_the_asked_label_reproducibly():
    cvae = _cvae()
    s1 = cvae.sample(6, 3, generator=torch.Generator().manual_seed(2))
    s2 = cvae.sample(6, torch.full((6,), 3), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(s1, s2)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(s1, cvae.decode(z, torch.full((6,), 3)))
    assert ((s1 >= 0) & (s1 <= 1)).all()


# ---------------------------------------------------------------------------------------------
# Bounds on log p(x|y): ELBO <= L_k <= L_k' for k <= k' (on average)
# ---------------------------------------------------------------------------------------------


def test_elbo_is_below_the_conditional_iwae_bound_which_rises_with_k():
    cvae = _cvae(d=2, hidden=(16,))
    x, y = _binary(40), _labels(40)
    with torch.no_grad():
        elbos = torch.stack([cvae.loss(x, y=y, generator=torch.Generator().manual_seed(s))["elbo"]
                             for s in range(20)]).mean()
        lk = {k: cvae.log_likelihood(x, y, k, generator=torch.Generator().manual_seed(3)).mean() for k in (1, 10, 200)}
    assert abs(lk[1] - elbos) < 3.0  # L_1 is an unbiased estimate of the ELBO
    assert elbos < lk[10] < lk[200]
    # L_k by brute force from torch.distributions, k = 10
    with torch.no_grad():
        mu, logvar = cvae.encode(x, y)
        g = torch.Generator().manual_seed(3)
        z = mu + torch.exp(0.5 * logvar) * torch.randn((10, *mu.shape), generator=g)
        log_w = (D.Bernoulli(logits=cvae.decode_logits(z, y)).log_prob(x).sum((-1, -2, -3))
                 + D.Normal(0.0, 1.0).log_prob(z).sum(-1) - D.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))
        brute = (torch.logsumexp(log_w, 0) - np.log(10)).mean()
    torch.testing.assert_close(lk[10], brute, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Training with labels: fit, evaluate_terms, train_cached
# ---------------------------------------------------------------------------------------------


def test_fit_passes_the_labels_and_learns_them():
    """On images whose class is only in the label (two classes, same pixels), a trained decoder gives
    the two labels different images; with the labels passed as y the loss falls."""
    assert train.takes_labels(_cvae()) and not train.takes_labels(models.VAE())
    g = torch.Generator().manual_seed(0)
    y = torch.randint(2, (256,), generator=g)
    x = torch.zeros(256, 1, 28, 28)
    x[y == 0, :, :14] = 1.0  # class 0: top half on
    x[y == 1, :, 14:] = 1.0  # class 1: bottom half on
    cvae = _cvae(d=2, hidden=(32,))
    h = train.fit(cvae, x, epochs=15, batch_size=32, lr=3e-3, y_train=y, x_val=x[:64], y_val=y[:64],
                  device="cpu", progress=False)
    assert len(h.val["loss"]) == 15  # validated with y_val each epoch
    assert h["loss"][-1] < 0.25 * h["loss"][0]
    with torch.no_grad():
        z = torch.zeros(1, 2)
        top = cvae.decode(z, torch.tensor([0]))[0, 0]
        bottom = cvae.decode(z, torch.tensor([1]))[0, 0]
    # The same code, two labels: each label lights its own half (an unconditional decoder could not).
    assert top[:14].mean() - top[14:].mean() > 0.2
    assert bottom[14:].mean() - bottom[:14].mean() > 0.2
    terms = train.evaluate_terms(cvae, x, y=y)
    assert terms["loss"] < h["loss"][0]
    assert evaluate.test_elbo(cvae, x, y=y)["elbo"] == pytest.approx(terms["elbo"])


def test_train_cached_passes_the_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "off")
    seen = {}
    real_fit = train.fit

    def spy(model, x, **kw):
        seen["y"] = kw.get("y_train")
        return real_fit(model, x, **kw)

    monkeypatch.setattr(train, "fit", spy)
    model, h = train.train_cached({"arch": "cvae", "latent_dim": 2, "hidden": [8]}, n_train=64, epochs=1,
                                  batch_size=32, device="cpu", binarize="dynamic", cache_dir=tmp_path, progress=False)
    from latentbook import data

    _, y = data.load("mnist", "train", n=64)
    assert seen["y"] is not None and torch.equal(seen["y"].cpu(), y.cpu())
    assert isinstance(model, models.ConditionalVAE) and h.epochs == 1
    # stored: the second call trains nothing
    seen.clear()
    train.train_cached({"arch": "cvae", "latent_dim": 2, "hidden": [8]}, n_train=64, epochs=1, batch_size=32,
                       device="cpu", binarize="dynamic", cache_dir=tmp_path, progress=False)
    assert not seen


def test_the_zoo_recipes_match_the_unconditional_vaes():
    for d in (2, 32):
        c, u = zoo.recipe(f"cvae-{d}"), zoo.recipe(f"vae-{d}")
        assert c.spec == {"arch": "cvae", "latent_dim": d}
        assert (c.epochs, c.batch_size, c.lr, c.lr_schedule, c.binarize) == \
            (u.epochs, u.batch_size, u.lr, u.lr_schedule, u.binarize)
        assert isinstance(models.build(c.spec), models.ConditionalVAE)


# ---------------------------------------------------------------------------------------------
# Clear errors for missing or invalid labels
# ---------------------------------------------------------------------------------------------


def test_missing_and_invalid_labels_are_refused_clearly():
    cvae = _cvae()
    x = _binary(4)
    with pytest.raises(ValueError, match="conditional: give the class labels"):
        train.fit(cvae, x, epochs=1, device="cpu", progress=False)
    with pytest.raises(TypeError):
        cvae.loss(x)  # y is a required keyword
    with pytest.raises(ValueError, match="4 class labels"):
        cvae.loss(x, y=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        cvae.loss(x, y=torch.tensor([1, 2, 3, 10]))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        cvae.loss(x, y=torch.tensor([1, 2, 3, -1]))
    with pytest.raises(ValueError, match="integer class labels"):
        cvae.loss(x, y=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="integer class labels"):
        cvae.encode(x, torch.tensor([True, False, True, False]))
    with pytest.raises(ValueError, match="class labels"):
        cvae.decode(torch.zeros(4, 3), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="y_train must hold integer"):
        train.fit(cvae, x, y_train=torch.tensor([0.0, 1.0, 2.0, 3.0]), epochs=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="takes no labels"):
        train.fit(models.VAE(latent_dim=2, hidden=(8,)), x, y_train=torch.arange(4), epochs=1, device="cpu",
                  progress=False)
    with pytest.raises(ValueError, match="z must be"):
        cvae.decode(torch.zeros(4, 5), torch.arange(4))


def test_spec_round_trip_and_versions():
    cvae = _cvae(d=4, hidden=(16, 8))
    spec = models.spec_of(cvae)
    assert spec == {"arch": "cvae", "latent_dim": 4, "hidden": [16, 8]}
    twin = models.build(spec)
    assert type(twin) is models.ConditionalVAE
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in cvae.state_dict().items()}
    assert models.versions_of(models.ConditionalVAE) == {"ConditionalVAE": 1, "VAE": 1}
    with pytest.raises(ValueError, match="unknown option"):
        models.build({"arch": "cvae", "latent_dim": 2, "encoder": "conv"})


# ---------------------------------------------------------------------------------------------
# Conditional evaluation, traversals and their figure
# ---------------------------------------------------------------------------------------------


def test_encode_and_kl_per_dimension_with_labels():
    cvae = _cvae()
    x, y = _binary(30), _labels(30)
    with torch.no_grad():
        mu, logvar = cvae.encode(x, y)
    torch.testing.assert_close(evaluate.encode(cvae, x, batch_size=7, y=y), mu)
    kl_j = evaluate.kl_per_dimension(cvae, x, batch_size=7, y=y)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    expected = D.kl_divergence(q, D.Normal(torch.zeros_like(mu), torch.ones_like(mu))).mean(0)
    torch.testing.assert_close(kl_j, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class labels"):
        evaluate.encode(cvae, x, y=y[:5])


class _LinearDecoder(torch.nn.Module):
    """decode(z) = sigmoid(W z): a decoder whose dimension j moves only the pixels in W's column j."""

    def __init__(self, W):
        super().__init__()
        self.W = torch.nn.Parameter(W)

    def encode(self, x):
        raise NotImplementedError

    def decode(self, z):
        return torch.sigmoid(z @ self.W.T).reshape(-1, 1, 28, 28)


def test_latent_traversal_sets_one_coordinate_and_decodes():
    W = torch.zeros(784, 3)
    W[:100, 0] = 1.0  # dimension 0 moves 100 pixels, dimension 1 none, dimension 2 all
    W[:, 2] = 2.0
    model = _LinearDecoder(W)
    z0 = torch.tensor([0.5, -1.0, 0.0])
    values = [-2.0, 0.0, 2.0]
    imgs = evaluate.latent_traversal(model, z0, [0, 1, 2], values)
    assert imgs.shape == (3, 3, 1, 28, 28)
    for i, j in enumerate([0, 1, 2]):
        for s, v in enumerate(values):
            z = z0.clone()
            z[j] = v
            torch.testing.assert_close(imgs[i, s], model.decode(z[None])[0].detach())
    change = evaluate.traversal_change(imgs)
    # numpy brute force: mean over steps of the mean absolute pixel change
    a = imgs.numpy().reshape(3, 3, -1)
    brute = np.mean([[np.abs(a[r, s + 1] - a[r, s]).mean() for s in range(2)] for r in range(3)], axis=1)
    np.testing.assert_allclose(change.numpy(), brute, rtol=1e-6)
    assert change[1] == 0 and change[2] > change[0] > 0  # an inactive dimension changes nothing
    with pytest.raises(ValueError, match="dims"):
        evaluate.latent_traversal(model, z0, [3], values)
    with pytest.raises(ValueError, match="z0"):
        evaluate.latent_traversal(model, z0[None], [0], values)
    with pytest.raises(ValueError, match="S >= 2"):
        evaluate.traversal_change(imgs[:, :1])



def test_code_probe_is_the_linear_probe_of_the_codes_and_is_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path))
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "off")
    cvae = _cvae(d=2, hidden=(16,))
    x_tr, y_tr, x_te, y_te = _binary(60, 1), _labels(60, 1), _binary(40, 2), _labels(40, 2)
    expected = evaluate.linear_probe(evaluate.encode(cvae, x_tr, y=y_tr), y_tr,
                                     evaluate.encode(cvae, x_te, y=y_te), y_te)
    assert evaluate.code_probe(cvae, x_tr, y_tr, x_te, y_te, conditional=True) == pytest.approx(expected)
    first = evaluate.code_probe(cvae, x_tr, y_tr, x_te, y_te, conditional=True, cache=True)
    assert first == pytest.approx(expected)
    monkeypatch.setattr(evaluate, "linear_probe", lambda *a, **k: pytest.fail("recomputed"))
    assert evaluate.code_probe(cvae, x_tr, y_tr, x_te, y_te, conditional=True, cache=True) == first
    vae = models.VAE(latent_dim=2, hidden=(16,))  # unconditional: encoded without labels
    with pytest.raises(BaseException, match="recomputed"):
        evaluate.code_probe(vae, x_tr, y_tr, x_te, y_te, cache=True)

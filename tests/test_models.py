"""Models: shapes, specs, and loss terms checked against torch.distributions and hand-written formulas."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as dist
from torch import nn

from latentbook import losses
from latentbook import models as M

SPECS = [
    {"arch": "mlp_ae", "latent_dim": 2},
    {"arch": "mlp_ae", "latent_dim": 3, "hidden": [64, 32], "output": "linear"},
    {"arch": "linear_ae", "latent_dim": 5},
    {"arch": "conv_ae", "latent_dim": 4},
    {"arch": "vae", "latent_dim": 2},
    {"arch": "vae", "encoder": "conv", "latent_dim": 20, "likelihood": "bernoulli"},
    {"arch": "vae", "latent_dim": 3, "hidden": [64], "likelihood": "gaussian", "obs_log_var": -2.0, "learn_obs_var": False},
]


def _images(b: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _code(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model.encode(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['arch']}-{s.get('encoder', '')}{s['latent_dim']}")
def test_shapes_and_spec_round_trip(spec):
    torch.manual_seed(0)
    model = M.build(spec)
    d = spec["latent_dim"]
    x = _images()
    z = _code(model, x)
    assert z.shape == (6, d)
    # flat [B, 784] input is the same images
    torch.testing.assert_close(_code(model, x.reshape(6, 784)), z, rtol=0, atol=0)
    assert model.decode(z).shape == (6, 1, 28, 28)
    assert model.decode(torch.randn(3, 6, d)).shape == (3, 6, 1, 28, 28)  # extra leading dims
    out = model.loss(x)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])

    spec_back = M.spec_of(model)
    assert {k: v for k, v in spec_back.items() if k in spec} == spec  # what we asked for is kept
    assert json.loads(json.dumps(spec_back)) == spec_back  # JSON-able
    assert M.spec_of(M.build(spec_back)) == spec_back  # canonical: a fixed point
    torch.manual_seed(0)
    twin = M.build(spec_back)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_mlp_autoencoder_layer_sizes_and_output_range():
    model = M.MLPAutoencoder(latent_dim=2)
    enc = [(m.in_features, m.out_features) for m in model.encoder if isinstance(m, nn.Linear)]
    dec = [(m.in_features, m.out_features) for m in model.decoder if isinstance(m, nn.Linear)]
    assert enc == [(784, 512), (512, 256), (256, 128), (128, 2)]
    assert dec == [(2, 128), (128, 256), (256, 512), (512, 784)]
    z = 10 * torch.randn(50, 2)
    x_hat = model.decode(z)
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    torch.testing.assert_close(x_hat, torch.sigmoid(model.decode_logits(z)))


def test_conv_autoencoder_feature_map_sizes():
    model = M.ConvAutoencoder(latent_dim=7)
    x = _images(3)
    assert model.encoder[:2](x).shape == (3, 32, 14, 14)
    assert model.encoder[:4](x).shape == (3, 64, 7, 7)
    assert model.encoder[-1].in_features == 7 * 7 * 64
    assert model.decoder[:3](torch.zeros(3, 7)).shape == (3, 64, 7, 7)
    assert model.decoder[:5](torch.zeros(3, 7)).shape == (3, 32, 14, 14)


def test_linear_autoencoder_is_affine_and_uses_mse():
    torch.manual_seed(0)
    model = M.LinearAutoencoder(latent_dim=4)
    assert not any(isinstance(m, (nn.ReLU, nn.Sigmoid)) for m in model.modules())
    x1, x2 = _images(4, 1), _images(4, 2)
    with torch.no_grad():
        mid = model(0.5 * (x1 + x2))
        torch.testing.assert_close(mid, 0.5 * (model(x1) + model(x2)), rtol=1e-5, atol=1e-5)
        out = model.loss(x1)
    assert model.decoder_weight.shape == (784, 4)
    torch.testing.assert_close(out["loss"], ((model(x1) - x1) ** 2).mean())
    with pytest.raises(ValueError, match="output='sigmoid'"):
        model.loss(x1, recon_loss="bce")


def test_autoencoder_loss_matches_hand_formulas():
    torch.manual_seed(0)
    model = M.MLPAutoencoder(latent_dim=2, hidden=(32,))
    x, noisy = _images(5, 1), _images(5, 2)
    out = model.loss(noisy, target=x)  # denoising: encode the noisy input, reconstruct the clean x
    p = model(noisy)
    bce = F.binary_cross_entropy(p, x, reduction="sum") / 5  # nats per image
    torch.testing.assert_close(out["loss"], bce, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["recon"], bce, rtol=1e-5, atol=1e-4)
    out = model.loss(x, recon_loss="mse")
    torch.testing.assert_close(out["loss"], ((model(x) - x) ** 2).mean())
    with pytest.raises(ValueError, match="recon_loss must be one of"):
        model.loss(x, recon_loss="l1")


def test_penalties_are_added_from_the_registry(monkeypatch):
    monkeypatch.setattr(M, "PENALTIES", dict(M.PENALTIES))

    @M.register_penalty("code_l2")
    def code_l2(model, x, z, *, generator=None, scale=1.0):
        return scale * (z**2).sum(1)

    torch.manual_seed(0)
    model = M.MLPAutoencoder(latent_dim=3, hidden=(16,))
    x = _images(4)
    z = model.encode(x)
    plain = model.loss(x)["loss"]
    out = model.loss(x, penalties={"code_l2": {"weight": 0.5, "scale": 2.0}})
    expected_pen = 2.0 * (z**2).sum(1).mean()
    torch.testing.assert_close(out["code_l2"], expected_pen)
    torch.testing.assert_close(out["loss"], plain + 0.5 * expected_pen)
    with pytest.raises(ValueError, match="unknown penalty 'sparsity'.*code_l2"):
        model.loss(x, penalties={"sparsity": 1.0})
    with pytest.raises(ValueError, match="weight >= 0"):
        model.loss(x, penalties={"code_l2": -1.0})


def _vae_by_hand(vae, x, z, beta=1.0):
    """recon, kl, loss, elbo for one z per image, from torch.distributions (independent of losses.py)."""
    mu, logvar = vae.encode(x)
    sigma = torch.exp(0.5 * logvar)
    kl = dist.kl_divergence(dist.Normal(mu, sigma), dist.Normal(0.0, 1.0)).sum(-1)  # [B]
    if vae.likelihood == "bernoulli":
        log_px = dist.Bernoulli(logits=vae.decode_logits(z)).log_prob(x).flatten(1).sum(1)
    else:
        mean = vae.decode(z)
        log_px = dist.Normal(mean, torch.exp(0.5 * vae.obs_log_var)).log_prob(x).flatten(1).sum(1)
    return {"recon": -log_px.mean(), "kl": kl.mean(), "loss": (-log_px + beta * kl).mean(), "elbo": (log_px - kl).mean()}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_loss_terms_equal_distributions_by_hand(likelihood):
    torch.manual_seed(0)
    vae = M.VAE(latent_dim=3, hidden=(64,), likelihood=likelihood, obs_log_var=-1.5)
    x = torch.bernoulli(_images(8))
    out = vae.loss(x, beta=4.0, generator=torch.Generator().manual_seed(7))
    mu, logvar = vae.encode(x)
    z = losses.reparameterize(mu, logvar, torch.Generator().manual_seed(7))  # the same draw
    want = _vae_by_hand(vae, x, z, beta=4.0)
    assert set(out) == {"loss", "elbo", "recon", "kl"}
    for k in want:
        torch.testing.assert_close(out[k], want[k], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["elbo"], -(out["recon"] + out["kl"]))


def test_vae_free_bits_and_kl_weight():
    torch.manual_seed(0)
    vae = M.VAE(latent_dim=4, hidden=(32,))
    x = torch.bernoulli(_images(16))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    base = vae.loss(x, generator=g())
    mu, logvar = vae.encode(x)
    kl_dim = dist.kl_divergence(dist.Normal(mu, torch.exp(0.5 * logvar)), dist.Normal(0.0, 1.0)).mean(0).detach()  # [d]
    floor = float(kl_dim.min() + kl_dim.max()) / 2  # binds for some dims only
    assert (kl_dim < floor).any() and (kl_dim > floor).any()
    out = vae.loss(x, free_bits=floor, beta=2.0, kl_weight=0.25, generator=g())
    torch.testing.assert_close(out["loss"], base["recon"] + 2.0 * 0.25 * kl_dim.clamp(min=floor).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["elbo"], base["elbo"])  # the reported bound is the true ELBO
    with pytest.raises(ValueError, match="kl_weight"):
        vae.loss(x, kl_weight=2.0)
    with pytest.raises(ValueError, match="free_bits"):
        vae.loss(x, free_bits=-1.0)


def test_vae_shapes_sampling_and_likelihood():
    torch.manual_seed(0)
    vae = M.VAE(latent_dim=3, hidden=(32,))
    x = torch.bernoulli(_images(5))
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    out = vae(x)
    assert set(out) == {"mu", "logvar", "z", "x_hat"} and out["x_hat"].shape == (5, 1, 28, 28)
    assert vae.decoder_params(out["z"])["logits"].shape == (5, 1, 28, 28)

    z = torch.randn(4, 5, 3)
    lp = vae.log_px_given_z(x, z)
    assert lp.shape == (4, 5)
    for s in range(4):  # the [S, B] form equals S separate [B] calls
        torch.testing.assert_close(lp[s], vae.log_px_given_z(x, z[s]))
    with pytest.raises(ValueError, match="B = 5"):
        vae.log_px_given_z(x, torch.randn(4, 6, 3))

    s1 = vae.sample(10, generator=torch.Generator().manual_seed(1))
    s2 = vae.sample(10, generator=torch.Generator().manual_seed(1))
    s3 = vae.sample(10, generator=torch.Generator().manual_seed(2))
    assert s1.shape == (10, 1, 28, 28) and not s1.requires_grad
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert 0 <= s1.min() and s1.max() <= 1

    # k = 1: the bound is log p(x|z) + log p(z) - log q(z|x) at one z drawn from q
    ll = vae.log_likelihood(x, k=1, generator=torch.Generator().manual_seed(4))
    z1 = losses.reparameterize(mu.expand(1, 5, 3), logvar.expand(1, 5, 3), torch.Generator().manual_seed(4))[0]
    q = dist.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z1).sum(-1)
    p = dist.Normal(0.0, 1.0).log_prob(z1).sum(-1)
    torch.testing.assert_close(ll, vae.log_px_given_z(x, z1) + p - q, rtol=1e-5, atol=1e-3)
    assert vae.log_likelihood(x, k=300, chunk_size=64).shape == (5,)


def test_gaussian_observation_variance_learned_or_fixed():
    learned = M.VAE(likelihood="gaussian", hidden=(8,), obs_log_var=-1.0)
    fixed = M.VAE(likelihood="gaussian", hidden=(8,), obs_log_var=-1.0, learn_obs_var=False)
    assert any(p is learned.obs_log_var for p in learned.parameters())
    assert not any(p is fixed.obs_log_var for p in fixed.parameters()) and "obs_log_var" in fixed.state_dict()
    with torch.no_grad():
        learned.obs_log_var.fill_(3.0)
    assert M.spec_of(learned)["obs_log_var"] == -1.0  # the spec rebuilds the untrained model


def test_bad_specs_and_inputs_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"unknown arch 'gan'.*'conv_ae'.*'vae'"):
        M.build({"arch": "gan"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\].*latent_dim"):
        M.build({"arch": "mlp_ae", "depth": 3})
    with pytest.raises(ValueError, match="'arch' key"):
        M.build({"latent_dim": 2})
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        M.build({"arch": "vae", "latent_dim": 0})
    with pytest.raises(ValueError, match=r"likelihood must be one of \['bernoulli', 'gaussian'\]"):
        M.VAE(likelihood="poisson")
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\].*got shape \(2, 28, 28\)"):
        M.MLPAutoencoder().encode(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="float images"):
        M.MLPAutoencoder().encode(torch.zeros(2, 784, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not a registered latentbook model"):
        M.spec_of(nn.Linear(2, 2))


def test_register_adds_an_architecture(monkeypatch):
    monkeypatch.setattr(M, "ARCHS", dict(M.ARCHS))

    with pytest.raises(TypeError, match="version"):  # every architecture carries its own version (store keys)
        @M.register("unversioned")
        class Unversioned(M.MLPAutoencoder):
            pass

    @M.register("tiny_ae")
    class TinyAE(M.MLPAutoencoder):
        version = 1

        def __init__(self, latent_dim: int = 2):
            super().__init__(latent_dim, hidden=(16,))

        def config(self):
            return {"latent_dim": self.latent_dim}

    model = M.build({"arch": "tiny_ae", "latent_dim": 3})
    assert isinstance(model, TinyAE) and M.spec_of(model) == {"arch": "tiny_ae", "latent_dim": 3}

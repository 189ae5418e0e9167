"""Chapter "regularised": corruptions (latentbook.noise), sparsity and contractive penalties, the
encoder Jacobian, and caching denoising autoencoders through a named corruption spec."""

import math

import numpy as np
import pytest
import torch
import torch.distributions as dist
from scipy import stats

from latentbook import evaluate, models as M, noise, store, train as T, zoo
from latentbook.pca import PCA


def _images(n=64, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Corruptions


def test_gaussian_noise_statistics():
    x = torch.full((500, 1, 28, 28), 0.5)
    eps = noise.gaussian(x, 0.3, generator=_gen(), clip=False) - x
    assert abs(eps.mean().item()) < 4 * 0.3 / math.sqrt(eps.numel())
    assert eps.std().item() == pytest.approx(0.3, rel=0.01)
    # the added noise is normal: a Kolmogorov-Smirnov test against N(0, 0.3²)
    assert stats.kstest(eps.flatten()[:20_000].numpy(), "norm", args=(0, 0.3)).pvalue > 1e-3
    # clipping is the clamp of the same draw; sigma = 0 changes nothing
    clipped = noise.gaussian(x, 0.3, generator=_gen())
    torch.testing.assert_close(clipped, (x + eps).clamp(0, 1))
    assert clipped.min() >= 0 and clipped.max() <= 1
    torch.testing.assert_close(noise.gaussian(x, 0.0, generator=_gen()), x)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_masking_sets_an_exact_fraction_of_pixels_to_zero(p):
    x = torch.ones(200, 1, 28, 28)
    out = noise.masking(x, p, generator=_gen())
    zeros = (out == 0).flatten(1).sum(1)
    assert (zeros == round(p * 784)).all()
    assert ((out == 0) | (out == 1)).all()  # unchosen pixels are unchanged
    if 0 < p < 1:
        # positions are random: every pixel is masked in about a fraction p of the images
        freq = (out == 0).float().mean(0).flatten()
        assert (freq - p).abs().max() < 6 * math.sqrt(p * (1 - p) / 200)
        assert not torch.equal(out[0], out[1])


def test_masking_leaves_other_pixels_alone():
    x = _images(20)
    out = noise.masking(x, 0.3, generator=_gen())
    changed = out != x
    assert (out[changed] == 0).all()
    assert (changed.flatten(1).sum(1) == round(0.3 * 784)).all()  # x has no exact zeros


@pytest.mark.parametrize("p", [0.05, 0.2, 0.6])
def test_salt_and_pepper_statistics(p):
    x = torch.full((300, 1, 28, 28), 0.5)
    out = noise.salt_and_pepper(x, p, generator=_gen())
    changed = out != 0.5
    k = round(p * 784)
    assert (changed.flatten(1).sum(1) == k).all()
    assert ((out[changed] == 0) | (out[changed] == 1)).all()
    salt = (out[changed] == 1).double().mean().item()
    assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / (300 * k))  # a fair coin


@pytest.mark.parametrize("kind,level", [("gaussian", 0.4), ("salt_and_pepper", 0.2), ("masking", 0.5)])
def test_corruptions_are_seeded(kind, level):
    x = _images(8)
    a = noise.corrupt(x, {"kind": kind, "level": level}, generator=_gen(3))
    b = noise.corrupt(x, {"kind": kind, "level": level}, generator=_gen(3))
    c = noise.corrupt(x, {"kind": kind, "level": level}, generator=_gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fn = noise.transform({"kind": kind, "level": level})
    assert torch.equal(fn(x, _gen(3)), a)
    assert fn.spec == {"kind": kind, "level": float(level)}
    assert a.shape == x.shape and a.dtype == x.dtype


def test_corruption_specs_are_checked():
    assert noise.check_spec({"kind": "masking", "level": 1}) == {"kind": "masking", "level": 1.0}
    for bad in ({"kind": "blur", "level": 0.1}, {"kind": "masking"}, {"kind": "masking", "level": 1.5},
                {"kind": "gaussian", "level": -0.1}, {"kind": "gaussian", "level": 0.1, "clip": False},
                "gaussian", {"kind": "masking", "level": True}):
        with pytest.raises(ValueError):
            noise.check_spec(bad)
    with pytest.raises(ValueError, match="float images"):
        noise.masking(torch.ones(2, 1, 28, 28, dtype=torch.uint8), 0.1)


def test_denoising_errors():
    x = _images(50)
    levels = [0.0, 0.2, 0.5]
    err_input = evaluate.denoising_errors(None, x, "masking", levels, seed=1)
    for lv, e in zip(levels, err_input):
        noisy = noise.masking(x, lv, generator=_gen(1))
        assert e == pytest.approx(((noisy - x) ** 2).mean().item(), rel=1e-6)
    assert err_input[0] == 0 and err_input[1] < err_input[2]
    torch.manual_seed(0)
    ae = M.MLPAutoencoder(latent_dim=4, hidden=(16,))
    err_ae = evaluate.denoising_errors(ae, x, "gaussian", [0.3], seed=1)
    noisy = noise.gaussian(x, 0.3, generator=_gen(1))
    with torch.no_grad():
        assert err_ae[0] == pytest.approx(((ae(noisy) - x) ** 2).mean().item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Sparse codes


def test_code_activation_option():
    torch.manual_seed(0)
    plain = M.build({"arch": "mlp_ae", "latent_dim": 5})
    assert "code_activation" not in M.spec_of(plain)  # existing specs (and cache keys) keep their form
    sig = M.build({"arch": "mlp_ae", "latent_dim": 5, "hidden": [], "code_activation": "sigmoid"})
    z = sig.encode(_images(10))
    assert z.shape == (10, 5) and (z > 0).all() and (z < 1).all()
    spec = M.spec_of(sig)
    assert spec["code_activation"] == "sigmoid" and M.spec_of(M.build(spec)) == spec
    with pytest.raises(ValueError, match="code_activation"):
        M.build({"arch": "mlp_ae", "code_activation": "tanh"})


def test_bernoulli_kl_matches_torch_distributions():
    rho_hat = torch.tensor([0.01, 0.05, 0.3, 0.5, 0.99], dtype=torch.float64)
    for rho in (0.05, 0.2):
        want = dist.kl_divergence(dist.Bernoulli(probs=torch.full_like(rho_hat, rho)), dist.Bernoulli(probs=rho_hat))
        torch.testing.assert_close(M.bernoulli_kl(rho, rho_hat), want)
    assert M.bernoulli_kl(0.05, torch.tensor([0.05])).item() == pytest.approx(0.0, abs=1e-7)


def test_sparsity_penalties():
    torch.manual_seed(0)
    model = M.build({"arch": "mlp_ae", "latent_dim": 6, "hidden": [], "code_activation": "sigmoid"})
    x = _images(16)
    z = model.encode(x)
    out = model.loss(x, penalties={"l1": 0.1, "kl_sparsity": {"weight": 2.0, "rho": 0.1}})
    torch.testing.assert_close(out["l1"], z.abs().sum(1).mean())
    p = dist.Bernoulli(probs=torch.full((6,), 0.1))
    kl = dist.kl_divergence(p, dist.Bernoulli(probs=z.mean(0))).sum()
    torch.testing.assert_close(out["kl_sparsity"], kl)
    torch.testing.assert_close(out["loss"], out["recon"] + 0.1 * out["l1"] + 2.0 * kl)
    # codes whose unit means equal rho pay nothing
    z_rho = torch.full((4, 6), 0.1)
    assert M.PENALTIES["kl_sparsity"](model, x[:4], z_rho, rho=0.1).item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="code_activation='sigmoid'"):
        M.build({"arch": "mlp_ae", "latent_dim": 3}).loss(x, penalties={"kl_sparsity": 1.0})
    with pytest.raises(ValueError, match="rho"):
        model.loss(x, penalties={"kl_sparsity": {"weight": 1.0, "rho": 1.0}})


# --------------------------------------------------------------------------------------------
# Contractive penalty and the encoder Jacobian


def _exact_jacobian_sq(encode, x):
    """||dz/dx||_F² per image from torch.autograd.functional.jacobian, one image at a time."""
    out = []
    for xi in x:
        J = torch.autograd.functional.jacobian(lambda v: encode(v.view(1, 1, 28, 28))[0], xi.flatten())
        out.append((J**2).sum())
    return torch.stack(out)


def test_sigmoid_layer_jacobian_closed_form():
    torch.manual_seed(0)
    model = M.build({"arch": "mlp_ae", "latent_dim": 12, "hidden": [], "code_activation": "sigmoid"})
    x = _images(5).double()
    model.double()
    layer = M.sigmoid_layer(model)
    assert layer is model.encoder[1]
    closed = M.sigmoid_jacobian_sq(layer.weight, model.encode(x))
    torch.testing.assert_close(closed, _exact_jacobian_sq(model.encode, x))
    out = model.loss(x, penalties={"contractive": 0.5})
    torch.testing.assert_close(out["contractive"], closed.mean())
    assert M.sigmoid_layer(M.build({"arch": "mlp_ae", "latent_dim": 3})) is None


def test_projection_estimate_is_unbiased():
    """Mean of n draws within 4 standard errors of the autograd Jacobian; Var ||J^T v||² = 2 tr((J J^T)²)."""
    torch.manual_seed(0)
    model = M.build({"arch": "mlp_ae", "latent_dim": 8, "hidden": [32]}).double()
    x = _images(3).double()
    exact = _exact_jacobian_sq(model.encode, x)
    n = 4000
    est = M.jacobian_sq_estimate(model.encode, x, n_proj=n, generator=_gen(1).manual_seed(1))
    for i, xi in enumerate(x):
        J = torch.autograd.functional.jacobian(lambda v: model.encode(v.view(1, 1, 28, 28))[0], xi.flatten())
        A = J @ J.T
        se = math.sqrt(2 * (A @ A).trace().item() / n)
        assert abs(est[i].item() - exact[i].item()) < 4 * se, (est[i], exact[i], se)
    # one projection is an unbiased but noisy estimate: it differs from the exact value
    one = M.jacobian_sq_estimate(model.encode, x, n_proj=1, generator=_gen(2))
    assert not torch.allclose(one, exact, rtol=1e-3)


def test_contractive_penalty_methods_and_gradients():
    torch.manual_seed(0)
    shallow = M.build({"arch": "mlp_ae", "latent_dim": 6, "hidden": [], "code_activation": "sigmoid"}).double()
    x = _images(4).double()
    z = shallow.encode(x)
    exact = M.PENALTIES["contractive"](shallow, x, z)
    torch.testing.assert_close(exact, M.sigmoid_jacobian_sq(shallow.encoder[1].weight, z))
    # the gradient of the projection estimate is unbiased for the gradient of the exact penalty
    w = shallow.encoder[1].weight
    (g_exact,) = torch.autograd.grad(exact.mean(), w)
    proj = M.PENALTIES["contractive"](shallow, x, z, method="projection", n_proj=3000, generator=_gen(5))
    (g_proj,) = torch.autograd.grad(proj.mean(), w)
    assert (g_proj - g_exact).norm() / g_exact.norm() < 0.1
    deep = M.build({"arch": "mlp_ae", "latent_dim": 3, "hidden": [16]})
    with pytest.raises(ValueError, match="one-sigmoid-layer"):
        deep.loss(x.float(), penalties={"contractive": {"weight": 1.0, "method": "exact"}})
    out = deep.loss(x.float(), penalties={"contractive": 1.0}, generator=_gen())  # auto -> projection
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in deep.encoder.parameters())
    with torch.no_grad():  # evaluation (e.g. the trainer's validation pass) works without gradients
        val = deep.loss(x.float(), penalties={"contractive": 1.0}, generator=_gen())
    assert torch.isfinite(val["contractive"])


def test_jacobian_norms_against_autograd_and_pca():
    torch.manual_seed(0)
    x = _images(6)
    deep = M.build({"arch": "mlp_ae", "latent_dim": 5, "hidden": [24]})
    want = _exact_jacobian_sq(deep.encode, x).sqrt()
    torch.testing.assert_close(evaluate.jacobian_norms(deep, x, batch_size=4), want, rtol=1e-4, atol=1e-6)
    vae = M.build({"arch": "vae", "latent_dim": 3, "hidden": [16]})
    want = _exact_jacobian_sq(lambda v: vae.encode(v)[0], x).sqrt()
    torch.testing.assert_close(evaluate.jacobian_norms(vae, x), want, rtol=1e-4, atol=1e-6)
    # a one-sigmoid-layer encoder takes the closed form: the same numbers
    shallow = M.build({"arch": "mlp_ae", "latent_dim": 9, "hidden": [], "code_activation": "sigmoid"})
    want = _exact_jacobian_sq(shallow.encode, x).sqrt()
    torch.testing.assert_close(evaluate.jacobian_norms(shallow, x), want, rtol=1e-4, atol=1e-6)
    # PCA's code is z = V_k^T (x - mu) with orthonormal V_k: ||J||_F = sqrt(k) everywhere
    pca = PCA(7).fit(_images(100, seed=1))
    torch.testing.assert_close(evaluate.jacobian_norms(pca, x), torch.full((6,), math.sqrt(7)), rtol=1e-4, atol=0)


# --------------------------------------------------------------------------------------------
# Caching denoising and penalised autoencoders


BASE = dict(dataset="mnist", n_train=256, epochs=1, batch_size=64, lr=1e-3, seed=0,
            loss_kwargs=None, binarize=None, kl_warmup_epochs=0)
TINY = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [8]}


def test_corruption_enters_the_cache_key_only_when_given():
    key = lambda **kw: store.key_of(T.model_config(TINY, **{**BASE, **kw}))  # noqa: E731
    plain = T.model_config(TINY, **BASE)
    assert "corruption" not in plain["recipe"] and "exclude_classes" not in plain["data"]
    keys = {key(), key(corruption={"kind": "gaussian", "level": 0.5}), key(corruption={"kind": "gaussian", "level": 0.3}),
            key(corruption={"kind": "masking", "level": 0.5}),
            key(loss_kwargs={"penalties": {"l1": 0.1}}), key(loss_kwargs={"penalties": {"l1": 0.2}})}
    assert len(keys) == 6
    assert key(corruption={"kind": "masking", "level": 1}) == key(corruption={"kind": "masking", "level": 1.0})
    with pytest.raises(ValueError, match="corruption"):
        key(corruption={"kind": "blur", "level": 0.1})


def test_train_cached_trains_a_denoising_autoencoder(tmp_path, monkeypatch):
    seen = []
    real_fit = T.fit

    def spy(model, x, **kw):
        seen.append(kw["transform"])
        return real_fit(model, x, **kw)

    monkeypatch.setattr(T, "fit", spy)
    spec = {"kind": "salt_and_pepper", "level": 0.2}
    run = dict(BASE, device="cpu", progress=False, cache_dir=tmp_path)
    m1, _ = T.train_cached(TINY, corruption=spec, **run)
    m2, _ = T.train_cached(TINY, corruption=spec, **run)  # from the cache
    assert len(seen) == 1
    x = _images(4)
    assert torch.equal(seen[0](x, _gen(9)), noise.corrupt(x, spec, generator=_gen(9)))
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    T.train_cached(TINY, **run)  # no corruption: another entry, trained without a transform
    assert len(seen) == 2 and seen[1] is None


def test_penalised_model_trains_through_the_cache(tmp_path):
    spec = {"arch": "mlp_ae", "latent_dim": 4, "hidden": [], "code_activation": "sigmoid"}
    run = dict(BASE, device="cpu", progress=False, cache_dir=tmp_path)
    run["loss_kwargs"] = {"penalties": {"kl_sparsity": {"weight": 1.0, "rho": 0.05}, "contractive": 0.1}}
    model, history = T.train_cached(spec, **run)
    assert {"kl_sparsity", "contractive"} <= set(history.train)
    assert np.isfinite(history["loss"]).all()


def test_regularised_recipes():
    names = [n for n in zoo.RECIPES if n.startswith(("dae-", "sparse-", "cae-", "ae-sig-"))]
    assert len(names) >= 6
    for name in names:
        r = zoo.recipe(name)
        model = M.build(r.spec)
        if r.corruption is not None:
            noise.check_spec(r.corruption)
        if r.loss_kwargs:
            model.loss(_images(4), **r.loss_kwargs, generator=_gen())
    kinds = {zoo.recipe(n).corruption["kind"] for n in names if zoo.recipe(n).corruption}
    assert kinds == set(noise.KINDS)
    # the sparse and contractive models differ from their plain twin only in the penalty
    plain = zoo.recipe("ae-sig-128")
    for name in ("sparse-l1-128", "sparse-kl-128", "cae-128"):
        r = zoo.recipe(name)
        assert r.spec == plain.spec and (r.epochs, r.batch_size, r.lr) == (plain.epochs, plain.batch_size, plain.lr)

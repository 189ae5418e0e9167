"""The chapters "pca" and "autoencoders": their worked example, theorems and helpers, against oracles.

- the worked example X = [[1, 2], [2, 3], [3, 5]] against its closed form and scikit-learn;
- the maximal-variance theorem and Eckart–Young for *affine* linear autoencoders (the proof's decomposition);
- ``latentbook.pca.principal_angles`` against ``scipy.linalg.subspace_angles``;
- Baldi & Hornik: a linear autoencoder trained by ``latentbook.train.fit`` spans PCA's subspace;
- the zoo recipes the autoencoders chapter trains (a fair bottleneck sweep).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA as SkPCA

from latentbook import models, train, zoo
from latentbook.pca import PCA, principal_angles


def _spectrum_data(n: int, variances, seed: int) -> torch.Tensor:
    """[n, D] float64 Gaussian data with the given covariance spectrum in a random rotation, plus an offset."""
    gen = torch.Generator().manual_seed(seed)
    variances = torch.as_tensor(variances, dtype=torch.float64)
    D = len(variances)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    Z = torch.randn(n, D, generator=gen, dtype=torch.float64) * variances.sqrt()
    return Z @ Q.T + torch.randn(D, generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- worked example
def test_worked_example_closed_form_and_sklearn():
    """The chapter's numbers: λ = (10 ± √97)/6, v1 = (0.545, 0.838), codes (-1.663, -0.279, 1.942)."""
    X = torch.tensor([[1.0, 2.0], [2.0, 3.0], [3.0, 5.0]], dtype=torch.float64)
    pca = PCA(solver="eig").fit(X)
    lam = torch.tensor([(10 + math.sqrt(97)) / 6, (10 - math.sqrt(97)) / 6], dtype=torch.float64)
    torch.testing.assert_close(pca.explained_variance_, lam)
    # the eigenvector by hand: along (3/2, λ1 - 1), normalised, largest entry positive
    v = torch.tensor([1.5, lam[0] - 1], dtype=torch.float64)
    torch.testing.assert_close(pca.components_[0], v / v.norm())
    z = pca.transform(X)[:, 0]
    assert [round(t, 3) for t in z.tolist()] == [-1.663, -0.279, 1.942]
    assert [round(t, 3) for t in lam.tolist()] == [3.308, 0.025]
    assert round(float(lam[0] / lam.sum()) * 100, 1) == 99.2
    sk = SkPCA(2, svd_solver="full").fit(X.numpy())
    np.testing.assert_allclose(sk.explained_variance_, lam.numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.abs(sk.components_[0]), (v / v.norm()).numpy(), rtol=1e-10)
    # both components reconstruct X exactly, and the codes are uncorrelated with variances λ
    Z = pca.transform(X)
    torch.testing.assert_close(pca.inverse_transform(Z), X)
    torch.testing.assert_close(Z.T @ Z / 2, torch.diag(lam), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------- theorems
def test_first_direction_maximises_the_variance():
    X = _spectrum_data(2000, [9.0, 4.0, 1.0, 0.5, 0.1], seed=0)
    pca = PCA(solver="svd").fit(X)
    Xc = X - X.mean(0)
    var = lambda v: float(((Xc @ v) ** 2).sum() / (len(X) - 1))  # noqa: E731
    assert var(pca.components_[0]) == pytest.approx(float(pca.explained_variance_[0]), rel=1e-12)
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(5, 5000, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=0)
    assert float(((Xc @ u) ** 2).sum(0).max() / (len(X) - 1)) < var(pca.components_[0])
    # the second direction: best among directions orthogonal to the first
    u = u - pca.components_[0][:, None] * (pca.components_[0] @ u)
    u = u / u.norm(dim=0)
    assert float(((Xc @ u) ** 2).sum(0).max() / (len(X) - 1)) <= float(pca.explained_variance_[1]) * (1 + 1e-12)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_eckart_young_for_affine_linear_autoencoders(k):
    """Any encoder z = Ex + e, decoder x_hat = Fz + c: error = ||Xc - B||² + n||μ - c'||² >= PCA's error."""
    X = _spectrum_data(500, np.geomspace(10, 0.01, 12), seed=k)
    n, D = X.shape
    pca = PCA(k).fit(X)
    mu = X.mean(0)
    Xc = X - mu
    err_pca = float(((pca.inverse_transform(pca.transform(X)) - X) ** 2).sum())
    full = PCA().fit(X)
    assert err_pca == pytest.approx(float(full.explained_variance_[k:].sum()) * (n - 1), rel=1e-10)
    gen = torch.Generator().manual_seed(k)
    for trial in range(50):
        E = torch.randn(k, D, generator=gen, dtype=torch.float64)
        F = torch.randn(D, k, generator=gen, dtype=torch.float64)
        e = torch.randn(k, generator=gen, dtype=torch.float64)
        c = torch.randn(D, generator=gen, dtype=torch.float64)
        if trial % 2:  # half of them near the optimum: PCA's maps, slightly perturbed
            E = pca.components_ + 0.05 * E
            F = pca.components_.T + 0.05 * F
            c = mu - F @ (E @ mu) + 0.01 * c
            e = 0 * e
        X_hat = (X @ E.T + e) @ F.T + c
        err = float(((X - X_hat) ** 2).sum())
        B = Xc @ (F @ E).T
        c_prime = F @ (E @ mu + e) + c
        decomposed = float(((Xc - B) ** 2).sum()) + n * float(((mu - c_prime) ** 2).sum())
        assert err == pytest.approx(decomposed, rel=1e-10)
        assert err >= err_pca * (1 - 1e-12)


# --------------------------------------------------------------------------------------------- principal angles
@pytest.mark.parametrize("p,q", [(3, 3), (5, 2), (2, 5), (1, 4), (7, 7)])
def test_principal_angles_match_scipy(p, q):
    rng = np.random.default_rng(p * 10 + q)
    A, B = rng.normal(size=(30, p)), rng.normal(size=(30, q))
    ours = principal_angles(A, B)
    assert ours.dtype == torch.float64 and ours.shape == (min(p, q),)
    np.testing.assert_allclose(ours.numpy(), np.sort(subspace_angles(A, B)), rtol=1e-10, atol=1e-12)
    assert torch.all(ours[1:] >= ours[:-1])  # ascending
    np.testing.assert_allclose(principal_angles(B, A).numpy(), ours.numpy(), rtol=1e-10, atol=1e-12)


def test_principal_angles_small_and_right_angles():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 4))
    for eps in (1e-3, 1e-6, 1e-9):
        B = A @ rng.normal(size=(4, 4)) + eps * rng.normal(size=(40, 4))
        ours = principal_angles(torch.from_numpy(A), torch.from_numpy(B)).numpy()
        ref = np.sort(subspace_angles(A, B))
        np.testing.assert_allclose(ours, ref, rtol=1e-6)  # sines keep tiny angles accurate
        assert ours.max() < 100 * eps
    # the same subspace in another basis, scaled: all angles zero
    M = rng.normal(size=(4, 4))
    assert principal_angles(A, 1e3 * A @ M).max() < 1e-10
    # coordinate subspaces: e1, e2 against e2, e3 -> 0 and π/2
    I = np.eye(5)
    torch.testing.assert_close(principal_angles(I[:, :2], I[:, 1:3]), torch.tensor([0.0, math.pi / 2], dtype=torch.float64))


def test_principal_angles_float32_tensors_and_errors():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(20, 3, generator=gen)
    assert principal_angles(A, A.double()).max() < 1e-6
    with pytest.raises(ValueError, match="matrix"):
        principal_angles(torch.randn(20), A)
    with pytest.raises(ValueError, match="more columns"):
        principal_angles(A.T, A.T)
    with pytest.raises(ValueError, match="linearly dependent"):
        principal_angles(torch.cat([A, A[:, :1]], 1), A)
    with pytest.raises(ValueError, match="same space"):
        principal_angles(A, torch.randn(21, 3))
    with pytest.raises(ValueError, match="NaN"):
        principal_angles(A.masked_fill(A > 1, float("nan")), A)


# --------------------------------------------------------------------------------------------- Baldi & Hornik
def test_linear_autoencoder_finds_pca_subspace():
    """Gradient descent on a linear AE, via the book's trainer, ends in PCA's subspace (a wide eigengap).

    MNIST-like scale (variances summing to ~45 over 784 "pixels", top three 5, 4, 3), centred. Adam at
    lr 1e-2 gets within a few degrees; a second pass at lr 1e-3 removes most of the remaining jitter.
    """
    torch.manual_seed(0)
    d = 3
    variances = torch.cat([torch.tensor([5.0, 4.0, 3.0]), torch.linspace(0.1, 0.001, 781)])
    gen = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(784, 784, generator=gen))
    x = (torch.randn(2000, 784, generator=gen) * variances.sqrt()) @ Q.T
    images = x.view(-1, 1, 28, 28)
    pca = PCA(d).fit(x)
    ae = models.build({"arch": "linear_ae", "latent_dim": d})
    before = principal_angles(ae.decoder_weight.detach(), pca.components_.T)
    assert before.max() > math.radians(60)  # a random start is far from PCA's subspace
    train.fit(ae, images, epochs=20, batch_size=64, lr=1e-2, progress=False, device="cpu")
    train.fit(ae, images, epochs=10, batch_size=64, lr=1e-3, progress=False, device="cpu")
    after = torch.rad2deg(principal_angles(ae.decoder_weight.detach(), pca.components_.T))
    assert after.max() < 1.5, after
    # its error is no better than PCA's (Eckart–Young), and within 1% of it
    with torch.no_grad():
        mse_ae = float(((ae(images).flatten(1) - x) ** 2).mean())
    mse_pca = float(pca.reconstruction_mse(x).mean())
    assert mse_pca <= mse_ae < 1.01 * mse_pca


def test_only_the_subspace_of_a_linear_autoencoder_is_determined():
    """F A and A^-1 E reconstruct exactly as F and E do, and span the same subspace (angles 0)."""
    X = _spectrum_data(300, [5.0, 2.0, 1.0, 0.3, 0.1, 0.05], seed=4)
    pca = PCA(2).fit(X)
    F, E = pca.components_.T, pca.components_
    A = torch.tensor([[2.0, 1.0], [-0.5, 3.0]], dtype=torch.float64)
    F2, E2 = F @ A, torch.linalg.inv(A) @ E
    Xc = X - pca.mean_
    torch.testing.assert_close(Xc @ E2.T @ F2.T, Xc @ E.T @ F.T)
    assert principal_angles(F2, F).max() < 1e-12
    # the columns of F2 are neither orthonormal nor PCA's directions
    assert not torch.allclose(F2.T @ F2, torch.eye(2, dtype=F2.dtype))


# --------------------------------------------------------------------------------------------- the chapter's models
def test_pca_components_are_nested():
    """The PCA chapter truncates one fit for every k: PCA(k)'s components are PCA()'s first k."""
    X = _spectrum_data(400, np.geomspace(8, 0.05, 10), seed=5)
    full = PCA(solver="eig").fit(X)
    for k in (1, 4, 9):
        torch.testing.assert_close(PCA(k).fit(X).components_, full.components_[:k], rtol=0, atol=1e-10)


def test_autoencoder_recipes_make_a_fair_sweep():
    mlp = {d: zoo.recipe(f"ae-{d}") for d in (2, 8, 32)}
    conv = {d: zoo.recipe(f"conv-ae-{d}") for d in (8, 32)}
    for group in (mlp, conv):  # same training budget within each curve of the sweep
        assert len({(r.epochs, r.batch_size, r.lr, r.binarize) for r in group.values()}) == 1
    x = torch.rand(3, 1, 28, 28)
    for d, r in [*mlp.items(), *conv.items()]:
        model = models.build(r.spec)
        assert model.latent_dim == d
        assert model(x).shape == x.shape and model.encode(x).shape == (3, d)
    assert all(isinstance(models.build(r.spec), models.ConvAutoencoder) for r in conv.values())
    lin = zoo.recipe("linear-ae-6")
    model = models.build(lin.spec)
    assert isinstance(model, models.LinearAutoencoder) and model.latent_dim == 6
    assert model.default_recon_loss() == "mse"  # Baldi & Hornik's result is for the squared error

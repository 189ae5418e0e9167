"""PCA against scikit-learn, closed forms and the Eckart–Young theorem."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn
import torch
from sklearn.decomposition import PCA as SkPCA

from latentbook.pca import PCA, NotFittedError, components_for_variance

SOLVERS = ["svd", "eig", "auto"]
# sklearn >= 1.5 flips signs on V (largest |entry| of each component positive), our convention,
# so components can be compared with their signs; older versions flip on U.
SKLEARN_SAME_SIGNS = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 5)


def _random_data(n: int, D: int, seed: int) -> np.ndarray:
    """Correlated Gaussian data with well-separated variances (so components are well defined)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(5.0, 0.05, D)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    return rng.normal(size=(n, D)) * scales @ Q.T + rng.normal(size=D)


def _mnist_like(n: int = 1000, seed: int = 0) -> np.ndarray:
    """[n, 784] float32 images in [0, 1]: smooth blobs inside the 20x20 centre, exact zeros at the border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(8, 20, size=(25, 2))
    widths = rng.uniform(1.5, 4.0, size=25)
    atoms = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / (2 * widths[:, None, None] ** 2))
    atoms = atoms.reshape(25, 784)
    codes = rng.gamma(0.6, 1.0, size=(n, 25))
    imgs = codes @ atoms / 3 + 0.02 * rng.normal(size=(n, 784))
    imgs = np.clip(imgs, 0, 1)
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    imgs[:, border.reshape(-1)] = 0.0
    return imgs.astype(np.float32)


def _assert_components_equal(ours: torch.Tensor, theirs: np.ndarray, atol: float) -> None:
    ours = ours.double().numpy()
    if not SKLEARN_SAME_SIGNS:  # compare up to sign
        theirs = theirs * np.sign((ours * theirs).sum(1, keepdims=True))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)


# --------------------------------------------------------------------------------------------- oracle: sklearn
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("n,D,k", [(300, 20, 5), (300, 20, None), (40, 60, 7), (40, 60, None)])
def test_matches_sklearn_on_random_data(solver, n, D, k):
    X = _random_data(n, D, seed=n + D)
    ours = PCA(k, solver=solver).fit(X)
    ref = SkPCA(k, svd_solver="full").fit(X)
    assert ours.n_components_ == ref.n_components_
    assert ours.n_samples_ == n and ours.n_features_in_ == D
    np.testing.assert_allclose(ours.mean_.numpy(), ref.mean_, rtol=1e-10, atol=1e-12)
    # 1e-5 relative; the atol only absorbs round-off in a zero eigenvalue (n < D): ~1e-15 relative,
    # so ~1e-7 relative for its square root, the singular value (eig solver).
    for name, floor in (("explained_variance_", 1e-12), ("explained_variance_ratio_", 1e-12), ("singular_values_", 1e-6)):
        theirs = getattr(ref, name)
        np.testing.assert_allclose(getattr(ours, name).numpy(), theirs, rtol=1e-5, atol=floor * theirs[0])
    assert ours.noise_variance_ == pytest.approx(ref.noise_variance_, rel=1e-5, abs=1e-12)
    # When n < D the last direction has zero variance and an arbitrary orientation: compare the rest.
    m = min(ours.n_components_, n - 1)
    _assert_components_equal(ours.components_[:m], ref.components_[:m], atol=1e-6)
    Z = ours.transform(X)[:, :m].numpy()
    Zref = ref.transform(X)[:, :m]
    np.testing.assert_allclose(Z, Zref if SKLEARN_SAME_SIGNS else Zref * np.sign((Z * Zref).sum(0)), rtol=1e-5, atol=1e-8)
    Zin = np.random.default_rng(1).normal(size=(10, ours.n_components_))
    if ours.n_components_ == ref.n_components_ and m == ours.n_components_:
        np.testing.assert_allclose(ours.inverse_transform(Zin).numpy(), ref.inverse_transform(Zin), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ours.get_covariance().numpy(), ref.get_covariance(), rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS)
def test_matches_sklearn_on_mnist_like_images(solver):
    X32 = _mnist_like()
    k = 20
    ours = PCA(k, solver=solver).fit(torch.from_numpy(X32).reshape(-1, 1, 28, 28))
    ref = SkPCA(k, svd_solver="full").fit(X32.astype(np.float64))  # float64 reference
    assert ours.components_.dtype == torch.float32  # stored in the input's precision
    assert ours.components_.shape == (k, 784)
    np.testing.assert_allclose(ours.explained_variance_.numpy(), ref.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_ratio_.numpy(), ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(ours.singular_values_.numpy(), ref.singular_values_, rtol=1e-5)
    _assert_components_equal(ours.components_, ref.components_, atol=2e-5)
    Z = ours.transform(X32).numpy()
    scale = np.abs(ref.transform(X32)).max()
    np.testing.assert_allclose(Z, ref.transform(X32), rtol=0, atol=1e-5 * scale)
    X_hat = ours.inverse_transform(Z).numpy()
    np.testing.assert_allclose(X_hat, ref.inverse_transform(Z.astype(np.float64)), rtol=0, atol=1e-5)


def test_float_n_components_matches_sklearn():
    X = _random_data(500, 30, seed=3)
    for frac in (0.5, 0.8, 0.9, 0.95, 0.99):
        assert PCA(frac).fit(X).n_components_ == SkPCA(frac, svd_solver="full").fit(X).n_components_


# --------------------------------------------------------------------------------------------- the solvers agree
def test_svd_and_eig_solvers_agree():
    X = torch.from_numpy(_random_data(500, 40, seed=7))
    a = PCA(solver="svd").fit(X)
    b = PCA(solver="eig").fit(X)
    for name in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "mean_"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-10)
    # The components are orthonormal and follow the sign convention: largest |entry| positive.
    V = a.components_
    torch.testing.assert_close(V @ V.T, torch.eye(40, dtype=V.dtype), rtol=0, atol=1e-12)
    assert (V.gather(1, V.abs().argmax(1, keepdim=True)) > 0).all()


# --------------------------------------------------------------------------------------------- worked example
@pytest.mark.parametrize("solver", SOLVERS)
def test_worked_example_by_hand(solver):
    """X = [[1, 2], [2, 3], [3, 5]]: every number a reader can redo on paper.

    The 2x2 eigenvalues come from trace and determinant: λ = (t ± sqrt(t² - 4 det)) / 2 with
    t = 10/3, det = 7/3 - 9/4 = 1/12, so λ = 3.308 and 0.025; the first eigenvector solves
    (1 - λ1) v1 + 1.5 v2 = 0 -> (0.545, 0.838); projections of the centred rows onto it are
    (-1.663, -0.279, 1.942). (Eigenvalues 3.116 and 0.216, sometimes quoted for this X, cannot be
    right: their product 0.673 is not det = 1/12.)
    """
    X = torch.tensor([[1.0, 2.0], [2.0, 3.0], [3.0, 5.0]], dtype=torch.float64)
    pca = PCA(solver=solver).fit(X)
    torch.testing.assert_close(pca.mean_, torch.tensor([2.0, 10 / 3], dtype=torch.float64))
    cov = torch.tensor([[1.0, 1.5], [1.5, 7 / 3]], dtype=torch.float64)
    torch.testing.assert_close(pca.get_covariance(), cov)
    t, det = 10 / 3, 1 / 12
    lam = [(t + math.sqrt(t * t - 4 * det)) / 2, (t - math.sqrt(t * t - 4 * det)) / 2]
    torch.testing.assert_close(pca.explained_variance_, torch.tensor(lam, dtype=torch.float64))
    assert [round(v, 3) for v in pca.explained_variance_.tolist()] == [3.308, 0.025]
    v1 = pca.components_[0]
    assert [round(v, 3) for v in v1.tolist()] == [0.545, 0.838]  # both entries positive by our convention
    assert (cov @ v1).allclose(lam[0] * v1)
    z = pca.transform(X)[:, 0]
    assert [round(v, 3) for v in z.tolist()] == [-1.663, -0.279, 1.942]
    assert float(z.sum()) == pytest.approx(0.0, abs=1e-12)  # projections of centred data average to 0
    assert float(pca.explained_variance_ratio_[0]) == pytest.approx(lam[0] / t)


# --------------------------------------------------------------------------------------------- Eckart–Young
@pytest.mark.parametrize("solver", SOLVERS)
def test_eckart_young_reconstruction_error(solver):
    """Rank-k PCA error = sum of discarded eigenvalues, and no other rank-k projection beats it."""
    X = torch.from_numpy(_random_data(400, 25, seed=11))
    n, D = X.shape
    full = PCA(solver=solver).fit(X)
    gen = torch.Generator().manual_seed(0)
    for k in (1, 3, 10, 24):
        pca = PCA(k, solver=solver).fit(X)
        err = ((pca.inverse_transform(pca.transform(X)) - X) ** 2).sum(1).mean()  # mean squared norm
        discarded = full.explained_variance_[k:].sum() * (n - 1) / n
        torch.testing.assert_close(err, discarded, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(pca.reconstruction_mse(X).mean() * D, err, rtol=1e-9, atol=1e-12)
        Xc = X - pca.mean_
        # Random rank-k subspaces, and small rotations of the optimal one, all do worse.
        bases = [torch.linalg.qr(torch.randn(D, k, generator=gen, dtype=X.dtype)).Q for _ in range(50)]
        for eps in (1e-3, 1e-2, 1e-1):
            bases.append(torch.linalg.qr(pca.components_.T + eps * torch.randn(D, k, generator=gen, dtype=X.dtype)).Q)
        for Q in bases:
            other = ((Xc - Xc @ Q @ Q.T) ** 2).sum(1).mean()
            assert other >= err - 1e-9


# --------------------------------------------------------------------------------------------- inputs and errors
def test_inputs_numpy_torch_images_agree():
    X = _mnist_like(200, seed=1)
    a = PCA(5).fit(X)
    b = PCA(5).fit(torch.from_numpy(X))
    c = PCA(5).fit(torch.from_numpy(X).reshape(200, 1, 28, 28))
    torch.testing.assert_close(a.components_, b.components_)
    torch.testing.assert_close(a.components_, c.components_)
    Z = c.fit_transform(torch.from_numpy(X).reshape(200, 1, 28, 28))
    assert Z.shape == (200, 5) and Z.dtype == torch.float32
    torch.testing.assert_close(Z, a.transform(X))
    # uint8 pixels are accepted without rescaling
    u8 = (X * 255).round().astype(np.uint8)
    torch.testing.assert_close(PCA(3).fit(u8).mean_, torch.from_numpy(u8.astype(np.float32)).mean(0))


def test_device_auto_keeps_attributes_on_that_device():
    from latentbook.runmode import resolve_device

    pca = PCA(2, device="auto").fit(_random_data(50, 6, seed=0))
    assert pca.components_.device.type == resolve_device("auto").type
    assert pca.transform(_random_data(4, 6, seed=1)).device == pca.components_.device


def test_n_components_for_variance_thresholds():
    curve = [0.5, 0.3, 0.15, 0.05]
    assert [components_for_variance(curve, t) for t in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)] == [1, 2, 3, 3, 4, 4]
    assert components_for_variance(torch.tensor(curve, dtype=torch.float32), 0.96) == 4
    with pytest.raises(ValueError, match="explain only"):
        components_for_variance([0.5, 0.3], 0.9)
    for bad in (0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="threshold"):
            components_for_variance(curve, bad)
    pca = PCA().fit(_random_data(300, 10, seed=2))
    cum = torch.cumsum(pca.explained_variance_ratio_, 0)
    ks = pca.n_components_for([0.8, 0.9, 0.95, 0.99])
    for t, k in zip([0.8, 0.9, 0.95, 0.99], ks):
        assert cum[k - 1] >= t and (k == 1 or cum[k - 2] < t)


@pytest.mark.parametrize("k", [0, -1, 11, 1.0, 0.0, 1.5, True, "3"])
def test_bad_n_components(k):
    with pytest.raises(ValueError, match="n_components"):
        PCA(k).fit(_random_data(50, 10, seed=0))


def test_bad_input_errors():
    X = _random_data(50, 10, seed=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        PCA().fit(X[:1])
    Xn = X.copy()
    Xn[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PCA().fit(Xn)
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        PCA().fit(X[0])
    with pytest.raises(ValueError, match="solver"):
        PCA(solver="qr").fit(X)
    pca = PCA(3)
    with pytest.raises(NotFittedError, match="not fitted"):
        pca.transform(X)
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    pca.fit(X)
    with pytest.raises(ValueError, match="fitted on 10"):
        pca.transform(X[:, :9])
    with pytest.raises(ValueError, match="n_components_=3"):
        pca.inverse_transform(np.zeros((2, 4)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e3])  # near the origin: XᵀX - NμμᵀX; far from it: centred chunks
def test_centred_gram_is_the_full_symmetric_product(dtype, offset, monkeypatch):
    """Only the upper block triangle is multiplied, over several chunks; the result is the whole XcᵀXc."""
    from latentbook import pca as pca_module

    monkeypatch.setattr(pca_module, "CHUNK_ROWS", 128)  # several chunks
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(1000, 37, generator=g, dtype=torch.float64) ** 3 + offset).to(dtype)
    X[:, 5] = 0.0  # an all-zero column (MNIST's border) and a constant non-zero one
    X[:, 6] = 7.0
    mean = X.double().mean(0)
    gram = pca_module._centred_gram(X, mean)
    Xc = X.double() - mean
    expected = Xc.T @ Xc
    assert gram.dtype == torch.float64 and torch.equal(gram, gram.T)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(gram, expected, rtol=tol, atol=tol * expected.abs().max().item())
    assert torch.all(gram[5] == 0) and torch.all(gram[6].abs() <= tol * expected.abs().max())


def test_centred_gram_recentres_where_the_uncentred_product_would_cancel():
    """Float32 data far from the origin: XᵀX - Nμμᵀ alone loses the variances; the guard recentres."""
    from latentbook import pca as pca_module

    g = torch.Generator().manual_seed(1)
    X = (1e3 + torch.randn(4000, 12, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2, 12, dtype=torch.float64))
    X32 = X.float()
    mean = X32.double().mean(0)
    Xc = X32.double() - mean
    expected = Xc.T @ Xc
    relative = lambda G: float(((G - expected).abs() / expected.diagonal().sqrt().outer(expected.diagonal().sqrt())).max())
    assert relative(pca_module._centred_gram(X32, mean)) < 1e-5
    uncentred = pca_module._gram(X32) - len(X32) * torch.outer(mean, mean)  # what the guard avoids
    assert relative(uncentred) > 1e-2


@pytest.mark.parametrize("n,D,expected", [(300, 20, "eig"), (199, 20, "svd"), (40, 60, "svd"), (10010, 1001, "svd")])
def test_auto_solver_chooses_as_sklearn(n, D, expected):
    """Covariance eigendecomposition only for tall data (N >= 10 D, D <= 1000), scikit-learn's rule."""
    from latentbook.pca import _auto_solver

    assert _auto_solver(n, D) == expected
    if n * D > 1e5:  # the rule depends on the shape only: no need to fit a 10010 x 1001 matrix
        return
    X = np.random.default_rng(0).normal(size=(n, D)).astype(np.float32)
    assert PCA(3).fit(X).solver_ == expected
    sk = SkPCA(3, svd_solver="auto").fit(X)
    assert (sk._fit_svd_solver == "covariance_eigh") == (expected == "eig")

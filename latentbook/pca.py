"""Principal component analysis in torch, with scikit-learn's estimator API.

``PCA(n_components).fit(X)`` finds the orthonormal directions of maximal variance of ``X: [N, D]``
(images ``[N, 1, 28, 28]`` are flattened), ``transform`` projects onto them, ``z = (x - mean_) V_k``,
and ``inverse_transform`` maps codes back, ``x_hat = z V_kᵀ + mean_``.

Two solvers that must agree (the tests check it), and by default (``solver="auto"``) the choice
scikit-learn makes: ``"eig"`` for tall data (N ≥ 10 D and D ≤ 1,000, such as MNIST), ``"svd"``
otherwise, where squaring the data in ``XcᵀXc`` would cost more accuracy than it saves time:

* ``"svd"``: singular value decomposition of the centred data ``Xc = U S Vᵀ``; the components are
  the rows of ``Vᵀ`` and the variances ``S² / (N - 1)``. For tall data (N ≥ 2D) it first takes the
  QR factorisation ``Xc = Q R`` and decomposes the small ``R = U_r S Vᵀ`` (Chan's R-SVD, what
  LAPACK does internally for tall matrices): ``Xc = (Q U_r) S Vᵀ`` is then the SVD of ``Xc`` with
  the same ``S`` and ``V``, without ever forming the ``[N, D]`` factor ``U`` that PCA never uses.
* ``"eig"``: eigendecomposition of the covariance ``C = XcᵀXc / (N - 1)`` with ``torch.linalg.eigh``
  in float64. This is the fast solver for MNIST-sized data (N = 60,000 ≫ D = 784): one pass of
  matrix products, then a 784 × 784 eigenproblem.

Precision. The SVD and the eigendecomposition are float64 whatever the input dtype. Two passes over
the data follow the input's precision, because on MNIST-sized float32 data they dominate the cost:
the column sums for the mean, and the eig solver's ``D × D`` product ``XcᵀXc = XᵀX - N μμᵀ``, formed
from float32 products ``CHUNK_ROWS`` rows at a time summed over chunks in float64 (centred chunks
where the subtraction would cancel digits: see ``_centred_gram``). On MNIST the variances then agree
with an all-float64 computation to ~1e-6 relative for the leading 200 and ~5e-6 for all of them
(scikit-learn's float32 path: ~2e-4); pass float64 data for an all-float64 computation. The fitted
attributes are stored in the input's floating dtype (float32 for images), so ``transform`` on
MNIST stays a fast float32 matmul.

Sign convention. An eigenvector is only defined up to sign, so the result is made deterministic:
**the entry of largest absolute value in each component is positive** (ties: the first such
entry). This is the rule scikit-learn >= 1.5 applies (``svd_flip(..., u_based_decision=False)``),
so our components match sklearn's exactly, not only up to sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch

from .losses import mse
from .runmode import resolve_device

__all__ = ["PCA", "NotFittedError", "components_for_variance", "as_matrix", "principal_angles"]

SOLVERS = ("auto", "svd", "eig")


class NotFittedError(ValueError, AttributeError):
    """Raised when a PCA is used before ``fit`` (same bases as scikit-learn's NotFittedError)."""


def as_matrix(X, name: str = "X", device: torch.device | None = None, *, check_finite: bool = True) -> torch.Tensor:
    """``X`` (tensor or array, ``[N, D]`` or ``[N, ...]`` such as images) as a finite float ``[N, D]`` tensor.

    Floating tensors keep their dtype; anything else (uint8 pixels, ints) becomes float32 without
    rescaling. Raises ValueError for 0-d/1-d input, complex values, empty data, NaN or inf (unless
    ``check_finite=False``: the caller then checks with :func:`_check_finite` on a sum it needs anyway).
    """
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    elif not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X))
    if X.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {X.dtype}")
    if X.ndim < 2:
        raise ValueError(
            f"{name} must have shape [N, D] (or [N, 1, 28, 28] images); got shape {tuple(X.shape)}. "
            "For a single sample use x[None]."
        )
    if not X.is_floating_point():
        X = X.to(torch.float32)
    if X.ndim > 2:
        X = X.reshape(X.shape[0], -1)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}")
    if device is not None:
        X = X.to(device)
    if check_finite:
        _check_finite(X, name, X.sum())
    return X


def _check_finite(X: torch.Tensor, name: str, total: torch.Tensor) -> None:
    """Raise ValueError if ``X`` holds NaN or inf; ``total`` is any sum of all of ``X`` (e.g. its column sums).

    NaN and inf propagate into a sum: one cheap pass (10x faster than isfinite(X).all() on MNIST);
    only a non-finite sum (bad values, or an overflow of huge ones) pays for the exact count.
    """
    if not bool(torch.isfinite(total).all()):
        n_bad = int((~torch.isfinite(X)).sum())
        if n_bad:
            raise ValueError(f"{name} contains {n_bad} NaN or infinite values; PCA needs finite data")


def components_for_variance(ratio_curve, threshold: float) -> int:
    """Smallest k whose first k components explain at least ``threshold`` of the variance.

    ratio_curve: ``[K]`` per-component explained-variance ratios in decreasing order
    (``PCA.explained_variance_ratio_``), not yet accumulated. threshold: a fraction in (0, 1],
    e.g. 0.95 for "95 % of the variance".
    """
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a fraction in (0, 1], got {threshold!r}")
    ratios = torch.as_tensor(np.asarray(ratio_curve) if not isinstance(ratio_curve, torch.Tensor) else ratio_curve)
    ratios = ratios.detach().to("cpu", torch.float64).reshape(-1)
    if ratios.numel() == 0 or (ratios < 0).any() or not torch.isfinite(ratios).all():
        raise ValueError("ratio_curve must be a non-empty sequence of finite, non-negative ratios")
    cumulative = torch.cumsum(ratios, 0)
    # Ratios that sum to one in exact arithmetic may reach only 1 - 1e-7 in float32.
    tol = 1e-6
    if cumulative[-1] < threshold - tol:
        raise ValueError(
            f"the {ratios.numel()} components given explain only {float(cumulative[-1]):.4f} of the "
            f"variance, less than threshold={threshold}; fit with more components (n_components=None)"
        )
    k = int(torch.searchsorted(cumulative, torch.tensor([threshold - tol], dtype=torch.float64))) + 1
    return min(k, ratios.numel())


class PCA:
    """Principal component analysis (torch, float64 inside), scikit-learn style.

    Parameters
    ----------
    n_components: ``None`` keeps ``min(N, D)`` components; an int ``k`` with ``1 <= k <= min(N, D)``;
        or a float in (0, 1): the fewest components explaining at least that fraction of the variance.
    solver: ``"auto"`` (``"eig"`` for tall data, N ≥ 10 D with D ≤ 1,000; else ``"svd"``, as scikit-learn
        chooses), ``"svd"`` (SVD of the centred data) or ``"eig"`` (eigendecomposition of its covariance).
    device: where to compute and keep the fitted attributes; ``None`` uses the device of the data
        passed to ``fit`` (CPU for NumPy arrays), ``"auto"`` picks CUDA when present.

    Fitted attributes (``k = n_components_``): ``components_ [k, D]`` (orthonormal rows),
    ``mean_ [D]``, ``explained_variance_ [k]`` (eigenvalues of the covariance with the ``N - 1``
    denominator, as sklearn), ``explained_variance_ratio_ [k]``, ``singular_values_ [k]``,
    ``noise_variance_`` (mean of the discarded variances, sklearn's probabilistic-PCA estimate),
    ``n_components_``, ``n_samples_``, ``n_features_in_``, ``solver_`` (the solver used). Methods
    return torch tensors on that device, also for NumPy input.
    """

    def __init__(self, n_components: int | float | None = None, solver: str = "auto", device=None):
        self.n_components = n_components
        self.solver = solver
        self.device = device

    def __repr__(self) -> str:
        return f"PCA(n_components={self.n_components!r}, solver={self.solver!r}, device={self.device!r})"

    # ---------------------------------------------------------------- fitting
    def _check_params(self, n: int, D: int) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        k = self.n_components
        if k is None:
            return
        if isinstance(k, bool):
            raise ValueError(f"n_components must be None, an int or a float in (0, 1), got {k!r}")
        if isinstance(k, Integral):
            if not 1 <= k <= min(n, D):
                raise ValueError(
                    f"n_components={k} is out of range: with {n} samples and {D} features it must be "
                    f"between 1 and min(N, D) = {min(n, D)}"
                )
        elif isinstance(k, Real):
            if not 0 < k < 1:
                raise ValueError(
                    f"a float n_components is a fraction of explained variance and must be in (0, 1), got {k}"
                )
        else:
            raise ValueError(f"n_components must be None, an int or a float in (0, 1), got {k!r}")

    def fit(self, X) -> "PCA":
        """Fit to ``X: [N, D]`` (or ``[N, 1, 28, 28]``, flattened). Returns ``self``."""
        device = None if self.device is None else resolve_device(self.device)
        X = as_matrix(X, "X", device, check_finite=False)
        n, D = X.shape
        if n < 2:
            raise ValueError(f"PCA needs at least 2 samples to estimate a variance, got {n}")
        self._check_params(n, D)
        out_dtype = X.dtype if X.dtype == torch.float64 else torch.float32

        # Summed in the input's precision: a float64 reduction of float32 data is ~9x slower here, and an
        # error δ in the centre changes XcᵀXc only by N δδᵀ (~1e-14 for MNIST). The same pass checks for NaN/inf.
        column_sums = X.sum(0)
        _check_finite(X, "X", column_sums)
        mean = column_sums.to(torch.float64) / n
        r = min(n, D)  # number of non-trivial directions
        solver = self.solver if self.solver != "auto" else _auto_solver(n, D)
        if solver == "svd":
            Xc = X.to(torch.float64) - mean
            # R-SVD for clearly tall data (see the module docstring); plain thin SVD otherwise.
            # Below N ≈ 2D the extra QR costs more than the U it saves (LAPACK's own crossover is 11/6).
            A = torch.linalg.qr(Xc, mode="r").R if n >= 2 * D else Xc
            del Xc
            _, S, Vt = torch.linalg.svd(A, full_matrices=False)
            S, Vt = S[:r], Vt[:r]
            variance = S**2 / (n - 1)
        else:
            cov = _centred_gram(X, mean) / (n - 1)
            evals, evecs = torch.linalg.eigh(cov)  # ascending
            # Round-off can make zero eigenvalues slightly negative; a variance cannot be.
            variance = evals.flip(0)[:r].clamp_min(0)
            Vt = evecs.flip(1)[:, :r].T
            S = torch.sqrt(variance * (n - 1))
        Vt = _flip_signs(Vt)
        total_variance = variance.sum()
        ratio = variance / total_variance if total_variance > 0 else torch.zeros_like(variance)

        k = self.n_components
        if k is None:
            k = r
        elif not isinstance(k, Integral):
            k = components_for_variance(ratio, float(k))
        k = int(k)

        self.mean_ = mean.to(out_dtype)
        self.components_ = Vt[:k].to(out_dtype).contiguous()
        self.explained_variance_ = variance[:k].to(out_dtype)
        self.explained_variance_ratio_ = ratio[:k].to(out_dtype)
        self.singular_values_ = S[:k].to(out_dtype)
        self.noise_variance_ = float(variance[k:].mean()) if k < r else 0.0
        self.n_components_ = k
        self.n_samples_ = n
        self.n_features_in_ = D
        self.solver_ = solver
        return self

    def fit_transform(self, X) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)``: codes ``Z: [N, k]``."""
        return self.fit(X).transform(X)

    # ---------------------------------------------------------------- using
    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError("this PCA instance is not fitted yet; call fit(X) before using it")

    def transform(self, X) -> torch.Tensor:
        """Codes ``Z = (X - mean_) components_ᵀ``: ``X [N, D]`` (or images) -> ``Z [N, k]``."""
        self._check_fitted()
        X = as_matrix(X, "X", self.components_.device)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features per sample, but this PCA was fitted on {self.n_features_in_}")
        return (X.to(self.components_.dtype) - self.mean_) @ self.components_.T

    def inverse_transform(self, Z) -> torch.Tensor:
        """Reconstructions ``X_hat = Z components_ + mean_``: ``Z [N, k]`` -> ``X_hat [N, D]`` (flat; reshape for images)."""
        self._check_fitted()
        Z = as_matrix(Z, "Z", self.components_.device)
        if Z.shape[1] != self.n_components_:
            raise ValueError(f"Z has {Z.shape[1]} columns, but this PCA has n_components_={self.n_components_}")
        return Z.to(self.components_.dtype) @ self.components_ + self.mean_

    def reconstruction_mse(self, X) -> torch.Tensor:
        """Per-sample mean squared reconstruction error ``[N]`` (mean over the D pixels; ``.mean()`` for one number)."""
        X = as_matrix(X, "X")
        X_hat = self.inverse_transform(self.transform(X))
        return mse(X_hat, X.to(X_hat.device, X_hat.dtype))

    def get_covariance(self) -> torch.Tensor:
        """Model covariance ``[D, D]``: V_kᵀ diag(λ_k - σ²) V_k + σ² I with σ² = ``noise_variance_`` (as sklearn).

        With all components kept it is the sample covariance XcᵀXc / (N - 1); otherwise it is the
        probabilistic-PCA covariance WWᵀ + σ²I (see :mod:`latentbook.ppca`).
        """
        self._check_fitted()
        V = self.components_
        excess = (self.explained_variance_ - self.noise_variance_).clamp_min(0)
        eye = torch.eye(self.n_features_in_, dtype=V.dtype, device=V.device)
        return (V.T * excess) @ V + self.noise_variance_ * eye

    def n_components_for(self, threshold: float | Sequence[float]) -> int | list[int]:
        """Components needed to explain ``threshold`` of the variance (a fraction, or a list of them)."""
        self._check_fitted()
        if isinstance(threshold, Sequence):
            return [components_for_variance(self.explained_variance_ratio_, t) for t in threshold]
        return components_for_variance(self.explained_variance_ratio_, threshold)


CHUNK_ROWS = 16384  # rows per product in _centred_gram; their float32 sums are added up in float64
GRAM_BLOCKS = 4  # column blocks in _gram: 10 of 16 block products, ~5/8 of the multiplications
CANCELLATION_LIMIT = 10.0  # largest (XᵀX)_jj / (XcᵀXc)_jj accepted from the uncentred product (~1 digit)


def _centred_gram(X: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``XcᵀXc [D, D]`` in float64 for ``X [N, D]`` and its float64 ``mean [D]``, without an ``[N, D]`` copy.

    Formed as ``XᵀX - N μμᵀ``: the product then runs on ``X`` itself, so no centred copy is made and
    the exact zeros of images stay exact (on MNIST this is both faster and more accurate than centring
    first). The subtraction cancels digits where a column's mean is large against its spread: column
    ``j`` loses about ``log10 κ_j`` digits, ``κ_j = (XᵀX)_jj / (XcᵀXc)_jj`` (the off-diagonal entries
    lose at most as many, by Cauchy–Schwarz). MNIST has κ ≤ 2.7; above ``CANCELLATION_LIMIT`` (data
    far from the origin, a constant non-zero column) the product is recomputed on centred chunks.
    """
    raw = _gram(X)
    gram = raw - X.shape[0] * torch.outer(mean, mean)
    if bool((raw.diagonal() > CANCELLATION_LIMIT * gram.diagonal()).any()):  # all-zero columns: 0 > 0, kept
        gram = _gram(X, centre=mean)
    return gram


def _gram(X: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """``(X - centre)ᵀ(X - centre) [D, D]`` in float64 (``centre [D]`` or none) for ``X [N, D]``.

    Products of ``CHUNK_ROWS`` rows at a time in float32 (float64 for float64 input), summed over
    chunks in float64 (see "Precision" in the module docstring). The result is symmetric, so only the
    blocks on and above the diagonal are multiplied (torch has no ``syrk``), then mirrored: about a
    quarter faster than ``chunk.T @ chunk``.
    """
    work = torch.float64 if X.dtype == torch.float64 else torch.float32
    centre = None if centre is None else centre.to(work)
    D = X.shape[1]
    edges = [round(i * D / GRAM_BLOCKS) for i in range(GRAM_BLOCKS + 1)]
    gram = torch.zeros(D, D, dtype=torch.float64, device=X.device)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        chunk = X[start : start + CHUNK_ROWS].to(work)  # a view unless X needs converting
        if centre is not None:
            chunk = chunk - centre
        for a, b in zip(edges, edges[1:]):  # block row [a, b) against the columns from a on
            gram[a:b, a:] += (chunk[:, a:b].T @ chunk[:, a:]).to(torch.float64)
    return torch.triu(gram) + torch.triu(gram, 1).T


def _auto_solver(n: int, D: int) -> str:
    """scikit-learn's rule (>= 1.5): the covariance route for tall data, N >= 10 D with D <= 1,000."""
    return "eig" if D <= 1000 and n >= 10 * D else "svd"


def _flip_signs(Vt: torch.Tensor) -> torch.Tensor:
    """Make the largest-|value| entry of every row of ``Vt [k, D]`` positive (the module's sign convention)."""
    idx = Vt.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(Vt, 1, idx))
    signs[signs == 0] = 1  # only an all-zero row could get here; leave it alone
    return Vt * signs


def principal_angles(A, B) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``A [D, p]`` and ``B [D, q]``.

    The k-th angle is the smallest angle between the two subspaces once the first k - 1 pairs of
    directions are removed (Björck & Golub 1973); there are ``min(rank A, rank B)`` of them, 0 when
    a direction is shared and π/2 when orthogonal. Used to compare a linear autoencoder's decoder
    ``W [784, d]`` with PCA's subspace ``pca.components_.T [784, d]``: only the spanned subspaces
    matter, not the particular basis, scale or sign of either.

    Computed in float64 from orthonormal bases ``Q_A, Q_B``: the cosines are the singular values of
    ``Q_Aᵀ Q_B``; for small angles (cos² ≥ 1/2) the sines, the singular values of
    ``Q_B - Q_A Q_Aᵀ Q_B``, are used instead, which stay accurate where arccos would not
    (Knyazev & Argentati 2002; what ``scipy.linalg.subspace_angles`` does, whose order is descending).
    Returns a float64 tensor ``[min(p, q)]`` on the CPU. Raises ValueError for rank-deficient input.
    """
    mats = []
    for name, M in (("A", A), ("B", B)):
        M = torch.as_tensor(np.asarray(M) if not isinstance(M, torch.Tensor) else M.detach())
        if M.ndim != 2 or M.shape[0] == 0 or M.shape[1] == 0:
            raise ValueError(f"{name} must be a matrix [D, k] whose columns span a subspace, got shape {tuple(M.shape)}")
        M = M.to("cpu", torch.float64)
        if not torch.isfinite(M).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if M.shape[1] > M.shape[0]:
            raise ValueError(f"{name} has more columns ({M.shape[1]}) than rows ({M.shape[0]}): "
                             "pass the spanning vectors as columns (e.g. pca.components_.T)")
        Q, R = torch.linalg.qr(M)
        diag = R.diagonal().abs()
        if diag.min() <= 1e-12 * max(float(diag.max()), 1e-300):
            raise ValueError(f"the columns of {name} are linearly dependent (rank < {M.shape[1]}); "
                             "principal angles need a basis")
        mats.append(Q)
    QA, QB = mats
    if QA.shape[0] != QB.shape[0]:
        raise ValueError(f"A and B must live in the same space: {QA.shape[0]} rows against {QB.shape[0]}")
    if QB.shape[1] > QA.shape[1]:
        QA, QB = QB, QA  # the residual below needs dim QB <= dim QA
    M = QA.T @ QB  # [p, q], q <= p
    cos = torch.linalg.svdvals(M).clamp(0.0, 1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(QB - QA @ M).clamp(0.0, 1.0).flip(0)  # ascending -> same order as cos
    return torch.where(cos**2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))

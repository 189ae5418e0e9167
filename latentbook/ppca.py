"""The linear-Gaussian latent model (probabilistic PCA), where every quantity is exact.

Generative story: z ~ N(0, I_d), x = W z + mu + eps with eps ~ N(0, σ² I_D); W: ``[D, d]``.
Then (Tipping & Bishop 1999), with M = WᵀW + σ² I_d ``[d, d]``:

* marginal   p(x)   = N(mu, C), C = WWᵀ + σ² I_D, and by Woodbury / the determinant lemma
  C⁻¹ = (I - W M⁻¹ Wᵀ) / σ² and log|C| = (D - d) log σ² + log|M|, so nothing ``[D, D]`` is needed;
* posterior  p(z|x) = N(M⁻¹ Wᵀ (x - mu), σ² M⁻¹).

This makes it the test bed of the ELBO chapter: log p(x) = ELBO(q) + KL(q || p(z|x)) can be checked
to round-off for any q, and importance-sampling estimates compared with the exact marginal.
Everything is float64: the identities are checked to 1e-8.
"""

from __future__ import annotations

import math

import torch

from .losses import LOG_2PI, gaussian_kl, log_normal_diag
from .pca import PCA, as_matrix

__all__ = ["LinearGaussian", "fit_ppca"]

DTYPE = torch.float64


class LinearGaussian:
    """x = W z + mu + eps, z ~ N(0, I_d), eps ~ N(0, sigma2 I_D).

    W: ``[D, d]``; mu: ``[D]``; sigma2: positive float. Tensors are kept in float64 on W's device.
    Methods take x as ``[B, D]`` (or images ``[B, 1, 28, 28]``, flattened) and return per-sample values.
    """

    def __init__(self, W, mu, sigma2: float):
        W = torch.as_tensor(W).to(DTYPE)
        if W.ndim != 2:
            raise ValueError(f"W must be a [D, d] matrix, got shape {tuple(W.shape)}")
        D, d = W.shape
        mu = torch.as_tensor(mu).to(device=W.device, dtype=DTYPE)
        if mu.shape != (D,):
            raise ValueError(f"mu must have shape [D] = [{D}] to match W, got {tuple(mu.shape)}")
        sigma2 = float(sigma2)
        if not sigma2 > 0 or not math.isfinite(sigma2):
            raise ValueError(f"sigma2 (the noise variance) must be a positive finite number, got {sigma2}")
        if not (torch.isfinite(W).all() and torch.isfinite(mu).all()):
            raise ValueError("W and mu must be finite")
        self.W, self.mu, self.sigma2 = W, mu, sigma2
        self.log_sigma2 = math.log(sigma2)
        self._WtW = W.T @ W  # [d, d]
        M = self._WtW + sigma2 * torch.eye(d, dtype=DTYPE, device=W.device)
        self._M = M
        self._L = torch.linalg.cholesky(M)  # M is SPD since sigma2 > 0
        self._logdet_M = 2 * torch.log(torch.diagonal(self._L)).sum()

    @property
    def D(self) -> int:
        return self.W.shape[0]

    @property
    def d(self) -> int:
        return self.W.shape[1]

    def __repr__(self) -> str:
        return f"LinearGaussian(D={self.D}, d={self.d}, sigma2={self.sigma2:.4g})"

    # ------------------------------------------------------------ helpers
    def _x(self, x) -> torch.Tensor:
        x = as_matrix(x, "x", self.W.device).to(DTYPE)
        if x.shape[1] != self.D:
            raise ValueError(f"x has {x.shape[1]} features per sample, the model has D={self.D}")
        return x

    def _q(self, q_mu, q_logvar, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        q_mu = torch.as_tensor(q_mu).to(self.W.device, DTYPE)
        q_logvar = torch.as_tensor(q_logvar).to(self.W.device, DTYPE)
        if q_mu.shape != (B, self.d) or q_logvar.shape != (B, self.d):
            raise ValueError(
                f"q_mu and q_logvar must be [B, d] = [{B}, {self.d}], got {tuple(q_mu.shape)} and {tuple(q_logvar.shape)}"
            )
        return q_mu, q_logvar

    def _solve_M(self, rhs: torch.Tensor) -> torch.Tensor:
        """M⁻¹ rhs for rhs ``[d, n]``."""
        return torch.cholesky_solve(rhs, self._L)

    def covariance(self) -> torch.Tensor:
        """The marginal covariance C = WWᵀ + σ² I ``[D, D]`` (for checks on small D; log_marginal never forms it)."""
        return self.W @ self.W.T + self.sigma2 * torch.eye(self.D, dtype=DTYPE, device=self.W.device)

    # ------------------------------------------------------------ exact quantities
    def log_marginal(self, x) -> torch.Tensor:
        """Exact log p(x) = log N(x; mu, WWᵀ + σ²I): x ``[B, D]`` -> ``[B]`` (Woodbury + Cholesky of M)."""
        r = self._x(x) - self.mu  # [B, D]
        # rᵀC⁻¹r = (|r|² - |L⁻¹Wᵀr|²) / σ², since rᵀ W M⁻¹ Wᵀ r = |L⁻¹ Wᵀ r|² with M = L Lᵀ.
        a = torch.linalg.solve_triangular(self._L, self.W.T @ r.T, upper=False)  # [d, B]
        quad = ((r**2).sum(1) - (a**2).sum(0)) / self.sigma2
        logdet_C = (self.D - self.d) * self.log_sigma2 + self._logdet_M
        return -0.5 * (self.D * LOG_2PI + logdet_C + quad)

    def posterior(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z|x) = N(M⁻¹Wᵀ(x - mu), σ²M⁻¹): x ``[B, D]`` -> (mean ``[B, d]``, cov ``[d, d]``, shared by all x)."""
        r = self._x(x) - self.mu
        mean = self._solve_M(self.W.T @ r.T).T
        cov = self.sigma2 * torch.cholesky_inverse(self._L)
        return mean, cov

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I): z ``[..., d]`` -> ``[...]``."""
        return log_normal_diag(torch.as_tensor(z).to(self.W.device, DTYPE))

    def log_likelihood(self, x, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) = log N(x; Wz + mu, σ²I): x ``[B, D]``, z ``[B, d]`` or ``[S, B, d]`` -> ``[B]`` or ``[S, B]``."""
        x = self._x(x)
        z = torch.as_tensor(z).to(self.W.device, DTYPE)
        if z.shape[-1] != self.d or z.ndim < 2 or z.shape[-2] != x.shape[0]:
            raise ValueError(f"z must be [B, d] or [S, B, d] with B={x.shape[0]}, d={self.d}; got {tuple(z.shape)}")
        # log N(x; Wz + mu, σ²I) = log N(x - mu; Wz, σ²I). Wz [..., B, D] is materialised on purpose,
        # as a neural decoder's output would be (it is what bench_iwae_memory.py measures).
        return log_normal_diag(x - self.mu, z @ self.W.T, self.log_sigma2)

    def log_joint(self, x, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(x|z) + log p(z): shapes as :meth:`log_likelihood`."""
        return self.log_likelihood(x, z) + self.log_prior(z)

    def sample(self, n: int, generator: torch.Generator | None = None, return_latents: bool = False):
        """n draws x ``[n, D]`` from the model (and their z ``[n, d]`` if ``return_latents``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        dev = self.W.device
        z = torch.randn(n, self.d, generator=generator, dtype=DTYPE, device=dev)
        eps = torch.randn(n, self.D, generator=generator, dtype=DTYPE, device=dev)
        x = z @ self.W.T + self.mu + math.sqrt(self.sigma2) * eps
        return (x, z) if return_latents else x

    # ------------------------------------------------------------ adapters for losses.iwae_bound
    def encode(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior as an encoder: (mean ``[B, d]``, log of its *diagonal* variances ``[B, d]``).

        The posterior is diagonal (so this q is exact) when W has orthogonal columns, as
        :func:`fit_ppca`'s W does; otherwise this is its mean-field approximation.
        """
        mean, cov = self.posterior(x)
        return mean, torch.log(torch.diagonal(cov)).expand_as(mean)

    def decode_log_prob(self, x, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) with z ``[S, B, d]`` -> ``[S, B]`` (the decoder interface of ``losses.iwae_bound``)."""
        return self.log_likelihood(x, z)

    # ------------------------------------------------------------ variational quantities
    def elbo(self, x, q_mu, q_logvar) -> torch.Tensor:
        """ELBO(q) = E_q[log p(x|z)] - KL(q || p(z)) in closed form, q = N(q_mu, diag exp(q_logvar)) -> ``[B]``.

        E_q[log p(x|z)] = -½[D log 2πσ² + (|x - W m - mu|² + Σ_j |W_j|² s_j) / σ²] with s = exp(q_logvar),
        because E|x - Wz - mu|² = |x - Wm - mu|² + tr(WᵀW S).
        """
        x = self._x(x)
        q_mu, q_logvar = self._q(q_mu, q_logvar, x.shape[0])
        resid = x - q_mu @ self.W.T - self.mu
        trace_term = torch.exp(q_logvar) @ torch.diagonal(self._WtW)
        expected_loglik = -0.5 * (self.D * (LOG_2PI + self.log_sigma2) + ((resid**2).sum(1) + trace_term) / self.sigma2)
        return expected_loglik - gaussian_kl(q_mu, q_logvar)

    def kl_to_posterior(self, q_mu, q_logvar, x) -> torch.Tensor:
        """Exact KL(q || p(z|x)) for q = N(q_mu, diag exp(q_logvar)) and the full-covariance posterior -> ``[B]``.

        With Σ_p = σ²M⁻¹ (so Σ_p⁻¹ = M/σ²): ½[tr(M S)/σ² + δᵀMδ/σ² - d + d log σ² - log|M| - Σ log s_j],
        δ = m_p - q_mu.
        """
        x = self._x(x)
        q_mu, q_logvar = self._q(q_mu, q_logvar, x.shape[0])
        post_mean, _ = self.posterior(x)
        delta = post_mean - q_mu  # [B, d]
        trace_term = torch.exp(q_logvar) @ torch.diagonal(self._M)
        mahalanobis = ((delta @ self._M) * delta).sum(1)
        return 0.5 * (
            (trace_term + mahalanobis) / self.sigma2
            - self.d
            + self.d * self.log_sigma2
            - self._logdet_M
            - q_logvar.sum(1)
        )


def fit_ppca(X, d: int, device=None) -> LinearGaussian:
    """Maximum-likelihood probabilistic PCA (Tipping & Bishop 1999) of ``X: [N, D]`` (or images).

    With λ_1 ≥ … ≥ λ_D the eigenvalues of the sample covariance S = Σ(x - x̄)(x - x̄)ᵀ / N and U_d
    the top-d eigenvectors: mu = x̄, σ² = mean of the D - d discarded eigenvalues,
    W = U_d (Λ_d - σ² I)^{1/2} (the rotation R = I). Its columns are orthogonal, so the posterior
    p(z|x) is diagonal. device: as :class:`~latentbook.pca.PCA`.
    """
    X = as_matrix(X, "X").to(DTYPE)
    N, D = X.shape
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < D or d >= N:
        raise ValueError(f"d must be an int with 1 <= d < min(D, N) = {min(D, N)} (σ² needs discarded directions), got {d!r}")
    pca = PCA(n_components=d, solver="eig", device=device).fit(X)
    lam = pca.explained_variance_ * (N - 1) / N  # ML uses the 1/N covariance
    total = ((X.to(pca.mean_.device) - pca.mean_) ** 2).sum() / N  # trace(S) = sum of all D eigenvalues
    sigma2 = float((total - lam.sum()) / (D - d))
    if not sigma2 > 0:
        raise ValueError(
            f"the data has no variance outside its top {d} principal directions (σ² = {sigma2:.3g}); "
            "the maximum-likelihood noise variance would be 0 — use a smaller d"
        )
    W = pca.components_.T * torch.sqrt((lam - sigma2).clamp_min(0))
    return LinearGaussian(W, pca.mean_, sigma2)

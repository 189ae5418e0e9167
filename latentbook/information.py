"""Entropy, KL fits and mutual information: the helpers of the background appendix.

The Gaussian log-density, the KL between diagonal Gaussians and the Bernoulli cross-entropy live in
:mod:`latentbook.losses` (``log_normal_diag``, ``gaussian_kl_between``, ``bernoulli_log_prob``) and the
Bernoulli KL in :mod:`latentbook.models` (``bernoulli_kl``); this module adds what the appendix needs
beside them. Everything is in nats.

- :func:`bernoulli_entropy`, :func:`gaussian_entropy`, :func:`gaussian_expected_log_density`: the pieces
  of ``KL(q || p) = -H(q) - E_q[log p]``.
- :func:`gaussian_product`, :func:`gaussian_conditional`: the two Gaussian identities behind every
  closed-form posterior of the book.
- :func:`mixture_log_density`, :func:`kl_on_grid`, :func:`fit_gaussian_forward_kl`,
  :func:`fit_gaussian_reverse_kl`: Gaussian fits to a 1-D mixture in both directions of the KL
  (mass-covering against mode-seeking; Kingma & Welling 2019, §2.8).
- :func:`encoder_mutual_information`: I(x; z) under q for a diagonal-Gaussian encoder on N inputs, and
  its relation to the rate (the average KL to the prior).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from latentbook.losses import LOG_2PI, gaussian_kl_between, log_normal_diag

__all__ = [
    "bernoulli_entropy",
    "gaussian_entropy",
    "gaussian_expected_log_density",
    "gaussian_product",
    "gaussian_conditional",
    "mixture_log_density",
    "mixture_moments",
    "kl_on_grid",
    "fit_gaussian_forward_kl",
    "fit_gaussian_reverse_kl",
    "encoder_mutual_information",
]


def bernoulli_entropy(p: Tensor) -> Tensor:
    """H(Bernoulli(p)) = -p log p - (1 - p) log(1 - p), elementwise, for p in [0, 1] (0 log 0 = 0)."""
    p = torch.as_tensor(p)
    p = p if p.is_floating_point() else p.to(torch.get_default_dtype())
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p must lie in [0, 1]")
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) + 0.0  # + 0.0: no -0.0


def gaussian_entropy(logvar: Tensor) -> Tensor:
    """H(N(mu, diag exp(logvar))) = ½ Σ_j (log 2π + 1 + log σ_j²): ``[..., d] -> [...]`` (mu plays no part)."""
    return 0.5 * (LOG_2PI + 1 + logvar).sum(-1)


def gaussian_expected_log_density(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """E_{z~q}[log p(z)] for diagonal Gaussians q and p: ``[..., d] -> [...]`` (arguments broadcast).

    -½ Σ_j [log 2π + log σ_p,j² + (σ_q,j² + (mu_q,j - mu_p,j)²) / σ_p,j²]: the squared distance to p's mean
    averaged over q is q's variance plus the squared distance of the means.
    """
    mu_q, logvar_q, mu_p, logvar_p = torch.broadcast_tensors(mu_q, logvar_q, mu_p, logvar_p)
    return -0.5 * (LOG_2PI + logvar_p + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p)).sum(-1)


def gaussian_product(mu1: Tensor, var1: Tensor, mu2: Tensor, var2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """N(z; mu1, var1) N(z; mu2, var2) = c N(z; mu, var), elementwise (independent coordinates).

    Precisions add, 1/var = 1/var1 + 1/var2, and the mean is the precision-weighted average
    mu = var (mu1/var1 + mu2/var2); the constant is c = N(mu1; mu2, var1 + var2). Returns
    (mu, var, log c), each the broadcast shape of the arguments.
    """
    mu1, var1, mu2, var2 = (torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
                            for t in (mu1, var1, mu2, var2))
    if (var1 <= 0).any() or (var2 <= 0).any():
        raise ValueError("variances must be positive")
    var = 1 / (1 / var1 + 1 / var2)
    mu = var * (mu1 / var1 + mu2 / var2)
    s = var1 + var2
    log_c = -0.5 * (LOG_2PI + torch.log(s) + (mu1 - mu2) ** 2 / s)
    return mu, var, log_c


def gaussian_conditional(mean: Tensor, cov: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
    """p(a | b = x_b) for a joint Gaussian over (a, b), b its last ``len(x_b)`` coordinates.

    mean: ``[n]``; cov: ``[n, n]``; x_b: ``[m]`` or a batch ``[B, m]``. Returns the conditional mean
    ``mu_a + Σ_ab Σ_bb⁻¹ (x_b - mu_b)`` (``[n - m]`` or ``[B, n - m]``) and covariance
    ``Σ_aa - Σ_ab Σ_bb⁻¹ Σ_ba`` (``[n - m, n - m]``, the same for every x_b: observing b narrows a by
    the same amount whatever b turns out to be).
    """
    m = x_b.shape[-1]
    n = mean.shape[0]
    if cov.shape != (n, n) or not 0 < m < n:
        raise ValueError(f"need mean [n], cov [n, n] and x_b [..., m] with 0 < m < n; got {tuple(mean.shape)}, "
                         f"{tuple(cov.shape)}, {tuple(x_b.shape)}")
    k = n - m
    s_aa, s_ab, s_bb = cov[:k, :k], cov[:k, k:], cov[k:, k:]
    L = torch.linalg.cholesky(s_bb)
    # Σ_bb⁻¹ Σ_ba and Σ_bb⁻¹ (x_b - mu_b) by Cholesky solves, never an explicit inverse
    gain = torch.cholesky_solve(s_ab.T, L)  # [m, k]
    resid = (x_b - mean[k:]).reshape(-1, m)  # [B, m]
    cond_mean = mean[:k] + resid @ gain  # [B, k]
    cond_cov = s_aa - s_ab @ gain
    return cond_mean.reshape(*x_b.shape[:-1], k), cond_cov


def mixture_log_density(z: Tensor, weights, means, stds) -> Tensor:
    """log Σ_k w_k N(z; m_k, s_k²) of a 1-D Gaussian mixture at each point of z (any shape)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    m = torch.as_tensor(means, dtype=torch.float64)
    s = torch.as_tensor(stds, dtype=torch.float64)
    if not (w.shape == m.shape == s.shape and w.ndim == 1) or (w <= 0).any() or (s <= 0).any():
        raise ValueError("weights, means and stds must be 1-D of one length, weights and stds positive")
    if not math.isclose(w.sum().item(), 1.0, rel_tol=1e-9):
        raise ValueError(f"weights must sum to 1, got {w.sum().item()}")
    z = torch.as_tensor(z, dtype=torch.float64)
    comp = log_normal_diag(z.unsqueeze(-1).unsqueeze(-1), m.unsqueeze(-1), 2 * torch.log(s).unsqueeze(-1))
    return torch.logsumexp(torch.log(w) + comp, dim=-1)


def mixture_moments(weights, means, stds) -> tuple[float, float]:
    """Mean and standard deviation of a 1-D Gaussian mixture (law of total variance)."""
    w, m, s = (np.asarray(a, dtype=float) for a in (weights, means, stds))
    mean = float(w @ m)
    var = float(w @ (s**2 + m**2)) - mean**2
    return mean, math.sqrt(var)


def kl_on_grid(log_p: Tensor, log_q: Tensor, grid: Tensor) -> float:
    """KL(p || q) = ∫ p (log p - log q) by the trapezoid rule, from log-densities on a uniform 1-D grid.

    The grid must cover where p has mass; points where p underflows to 0 contribute 0.
    """
    p = torch.exp(log_p)
    integrand = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return torch.trapezoid(integrand, grid).item()


def fit_gaussian_forward_kl(weights, means, stds) -> tuple[float, float]:
    """argmin over Gaussians q of KL(p || q) for a 1-D mixture p: q matches p's mean and variance.

    KL(p || q) = -H(p) - E_p[log q], and E_p[log q] for a Gaussian q depends on p only through its first
    two moments; it is largest when q has them (mass-covering: q spreads over every mode).
    """
    return mixture_moments(weights, means, stds)


def fit_gaussian_reverse_kl(weights, means, stds, init_mean: float, init_std: float,
                            n_nodes: int = 80) -> tuple[float, float, float]:
    """A local minimum over Gaussians q = N(m, s²) of KL(q || p) for a 1-D mixture p, from a start.

    KL(q || p) = -H(q) - E_q[log p]: H(q) in closed form, E_q[log p] by Gauss-Hermite quadrature with
    ``n_nodes`` nodes (smooth in (m, log s), so L-BFGS converges in a few dozen steps). The result depends
    on the start: from near one mode it stays on that mode (mode-seeking). Returns (m, s, KL(q || p)).
    """
    t, w = np.polynomial.hermite.hermgauss(n_nodes)
    t = torch.tensor(t * math.sqrt(2), dtype=torch.float64)
    w = torch.tensor(w / math.sqrt(math.pi), dtype=torch.float64)  # E_N(0,1)[f] ≈ Σ w f(t)
    params = torch.tensor([init_mean, math.log(init_std)], dtype=torch.float64, requires_grad=True)

    def kl():
        m, log_s = params[0], params[1]
        log_p = mixture_log_density(m + torch.exp(log_s) * t, weights, means, stds)
        entropy = 0.5 * (LOG_2PI + 1) + log_s
        return -entropy - (w * log_p).sum()

    opt = torch.optim.LBFGS([params], lr=1, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = kl()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return params[0].item(), math.exp(params[1].item()), kl().item()


def encoder_mutual_information(mu: Tensor, logvar: Tensor, n_samples: int = 1,
                               generator: torch.Generator | None = None) -> dict[str, float]:
    """I(x; z) under q for a diagonal-Gaussian encoder on N equally likely inputs, with the rate.

    mu, logvar: ``[N, d]``, the encoder's output for each input x_n. The joint is q(x_n, z) =
    q(z | x_n) / N and the aggregate posterior q(z) = (1/N) Σ_n q(z | x_n). Returns, in nats:

    - ``rate``: the average KL(q(z | x_n) || N(0, I)), in closed form;
    - ``mi``: I(x; z) = E_n E_{z~q(z|x_n)}[log q(z | x_n) - log q(z)], by Monte Carlo (``n_samples``
      draws per input; every draw is scored against all N encoders, so it costs N² d per draw);
    - ``marginal_kl``: KL(q(z) || N(0, I)) = E[log q(z) - log p(z)] on the same draws.

    rate = mi + marginal_kl, so the rate bounds I(x; z) from above; and I(x; z) ≤ log N.
    """
    if mu.ndim != 2 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be [N, d], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    n = mu.shape[0]
    rate = gaussian_kl_between(mu, logvar, torch.zeros_like(mu), torch.zeros_like(mu)).mean().item()
    mi = marg = 0.0
    for _ in range(n_samples):
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # [N, d], one draw from each q(z | x_n)
        log_q_all = log_normal_diag(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # [N, N]
        log_q_own = torch.diagonal(log_q_all)
        log_q_agg = torch.logsumexp(log_q_all, dim=1) - math.log(n)
        mi += (log_q_own - log_q_agg).mean().item() / n_samples
        marg += (log_q_agg - log_normal_diag(z)).mean().item() / n_samples
    return {"rate": rate, "mi": mi, "marginal_kl": marg, "log_n": math.log(n)}

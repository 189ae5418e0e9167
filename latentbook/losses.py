"""Log-likelihoods, KL divergences, the ELBO and the importance-weighted bound.

Every function returns one value per sample (shape ``[B]``, or ``[S, B]`` for ``S`` latent samples);
the reduction (usually ``.mean()``) is the caller's choice, so the same helpers serve training losses,
per-image anomaly scores and test log-likelihoods. Log densities are in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "bernoulli_log_prob",
    "gaussian_log_prob",
    "mse",
    "gaussian_kl",
    "gaussian_kl_between",
    "reparameterize",
    "log_normal_diag",
    "elbo_terms",
    "iwae_bound",
    "iwae_bound_dataset",
    "default_chunk_size",
]

LOG_2PI = math.log(2 * math.pi)
VERSION = 1  # of the losses: bump when a change alters the weights training converges to (store keys)


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t: [B, ...]`` over every dimension but the first -> ``[B]``."""
    return t.reshape(t.shape[0], -1).sum(1) if t.ndim > 1 else t


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim == 0:
        raise ValueError(f"{na} needs a batch dimension first, e.g. [B, ...]; got a scalar")


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) = Σ_pixels [x log σ(l) + (1 - x) log(1 - σ(l))] -> ``[B]``.

    logits, x: ``[B, ...]`` (e.g. ``[B, 1, 28, 28]``). Computed from the logits (it equals minus
    binary cross-entropy with logits), so logits of ±100 stay finite. Grey levels x in [0, 1] are
    allowed: the result is then the continuous cross-entropy objective, not a normalised density.
    """
    _check_same_shape(logits, x, "logits", "x")
    return -_sum_per_sample(F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none"))


def gaussian_log_prob(mean: torch.Tensor, x: torch.Tensor, log_var: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_var))) summed over all non-batch dims -> ``[B]``.

    mean, x: ``[B, ...]``; log_var: a float or a tensor broadcastable to x (one learned scalar, one
    value per pixel, or per sample and pixel). The ``-½ log 2π`` constant is included, so with
    ``log_var = 0`` this is ``-½ Σ (x - mean)² - (D/2) log 2π``: MSE up to scale and a constant.
    """
    _check_same_shape(mean, x, "mean", "x")
    log_var = torch.as_tensor(log_var, dtype=mean.dtype, device=mean.device)
    try:
        ok = torch.broadcast_shapes(log_var.shape, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"log_var of shape {tuple(log_var.shape)} must broadcast to x's shape {tuple(x.shape)}")
    elementwise = -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))
    return _sum_per_sample(elementwise.expand(x.shape))


def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: mean over all non-batch dims of ``(x_hat - x)²`` -> ``[B]``."""
    _check_same_shape(x_hat, x, "x_hat", "x")
    diff2 = (x_hat - x) ** 2
    return diff2.reshape(diff2.shape[0], -1).mean(1) if diff2.ndim > 1 else diff2


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) = ½ Σ_j (mu_j² + σ_j² - log σ_j² - 1) -> ``[B]``.

    mu, logvar: ``[B, d]`` (any ``[B, ...]``; summed over all non-batch dims).
    """
    _check_same_shape(mu, logvar, "mu", "logvar")
    return _sum_per_sample(0.5 * (mu**2 + torch.exp(logvar) - logvar - 1))


def gaussian_kl_between(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu_q, diag σ_q²) || N(mu_p, diag σ_p²)) for diagonal Gaussians -> ``[B]``.

    ½ Σ_j [log σ_p² - log σ_q² + (σ_q² + (mu_q - mu_p)²) / σ_p² - 1]. mu_q, logvar_q: ``[B, d]``;
    mu_p, logvar_p: broadcastable to ``[B, d]`` (e.g. a learned prior ``[d]``).
    """
    _check_same_shape(mu_q, logvar_q, "mu_q", "logvar_q")
    try:
        shape = torch.broadcast_shapes(mu_q.shape, mu_p.shape, logvar_p.shape)
    except RuntimeError:
        raise ValueError(
            f"mu_p {tuple(mu_p.shape)} and logvar_p {tuple(logvar_p.shape)} must broadcast to q's shape {tuple(mu_q.shape)}"
        ) from None
    if shape != mu_q.shape:
        raise ValueError(f"p's parameters broadcast to {tuple(shape)}, which is larger than q's shape {tuple(mu_q.shape)}")
    kl = 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1)
    return _sum_per_sample(kl)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A differentiable sample z = mu + exp(½ logvar) ⊙ eps, eps ~ N(0, I): same shape as mu.

    The randomness sits in eps, which does not depend on (mu, logvar), so gradients flow to both.
    generator: optional ``torch.Generator`` on mu's device, for reproducible draws.
    """
    _check_same_shape(mu, logvar, "mu", "logvar")
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def log_normal_diag(
    z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dim: ``[..., d] -> [...]``.

    mu and logvar broadcast against z (e.g. z ``[S, B, d]`` with mu ``[B, d]``); the defaults give the
    standard normal prior log p(z). A scalar logvar (one shared variance, as in a Gaussian decoder
    with fixed σ²) takes a faster path: it is the hot loop of :func:`iwae_bound`.
    """
    if z.ndim == 0:
        raise ValueError("z must have a last (latent) dimension, e.g. [B, d]")
    mu = torch.as_tensor(mu, dtype=z.dtype, device=z.device)
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    diff = z - mu
    # einsum sums the squares without another [..., d] temporary (3x faster than pow(2).sum(-1) here).
    if logvar.ndim == 0:
        quad = torch.einsum("...i,...i->...", diff, diff) * torch.exp(-logvar)
        return -0.5 * (diff.shape[-1] * (LOG_2PI + logvar) + quad)
    shape = torch.broadcast_shapes(diff.shape, logvar.shape)
    diff = diff.expand(shape)
    quad = torch.einsum("...i,...i->...", diff, diff * torch.exp(-logvar))
    return -0.5 * (shape[-1] * LOG_2PI + logvar.expand(shape).sum(-1) + quad)


def elbo_terms(log_px_z: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Batch means of the ELBO's parts, and the loss to minimise.

    log_px_z: ``[B]`` reconstruction log-likelihood log p(x|z); kl: ``[B]`` KL(q(z|x) || p(z)).
    Returns scalars ``recon`` (mean log p(x|z)), ``kl`` (mean KL), ``elbo = recon - kl`` (the true
    bound, whatever beta) and ``loss = -(recon - beta * kl)`` (β-VAE objective; β = 1 is the VAE).
    """
    if log_px_z.ndim != 1 or log_px_z.shape != kl.shape:
        raise ValueError(f"log_px_z and kl must both be [B], got {tuple(log_px_z.shape)} and {tuple(kl.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    recon, kl_mean = log_px_z.mean(), kl.mean()
    return {"loss": -(recon - beta * kl_mean), "elbo": recon - kl_mean, "recon": recon, "kl": kl_mean}


# Decoder outputs per IWAE chunk when chunk_size=None: 2M values, 16 MB in float64. glibc serves
# allocations of 32 MB and more with a fresh mmap, whose page faults then cost as much as the
# arithmetic (measured: 200k faults per 100 images at 32 MB, none at 16 MB). On a GPU, pass a larger
# chunk_size.
CHUNK_ELEMENTS = 2**21


def default_chunk_size(batch_numel: int, k: int) -> int:
    """Samples per IWAE chunk for a batch of ``batch_numel`` values: ``CHUNK_ELEMENTS // batch_numel``, in [1, k]."""
    return max(1, min(k, CHUNK_ELEMENTS // max(1, batch_numel)))


Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
DecoderLogProb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def iwae_bound(
    encode: Encoder,
    decode_log_prob: DecoderLogProb,
    x: torch.Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-weighted bound (Burda et al. 2015) log (1/k) Σ_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) -> ``[B]``.

    encode(x) -> (mu, logvar), each ``[B, d]``: the diagonal Gaussian q(z|x).
    decode_log_prob(x, z) -> log p(x|z) ``[S, B]`` for z ``[S, B, d]``.
    The k samples are drawn ``chunk_size`` at a time and combined with a running logsumexp, so memory
    is that of one chunk whatever k is. ``chunk_size=None`` picks the largest chunk whose decoder
    output (``chunk · x.numel()`` values) stays under ``CHUNK_ELEMENTS`` (2M).
    k = 1 is the one-sample ELBO estimate log p(x|z) + log p(z) - log q(z|x); the bound rises
    toward log p(x) as k grows.
    Gradients flow through it (IWAE training); wrap it in ``torch.no_grad()`` for evaluation.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (number of importance samples) must be an int >= 1, got {k!r}")
    if chunk_size is None:
        chunk_size = default_chunk_size(x.numel(), k)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 (or None for automatic), got {chunk_size!r}")
    running = None
    for log_w in log_weight_chunks(encode, decode_log_prob, x, k, chunk_size, generator):
        chunk_lse = torch.logsumexp(log_w, dim=0)
        running = chunk_lse if running is None else torch.logaddexp(running, chunk_lse)
    return running - math.log(k)


def log_weight_chunks(
    encode: Encoder,
    decode_log_prob: DecoderLogProb,
    x: torch.Tensor,
    k: int,
    chunk_size: int,
    generator: torch.Generator | None = None,
):
    """Yield the log importance weights log p(x|z) + log p(z) - log q(z|x), ``chunk_size`` samples
    z ~ q(z|x) at a time, as ``[s, B]`` tensors (s = chunk_size, the last chunk k mod chunk_size).

    The one sampling loop behind :func:`iwae_bound` and ``montecarlo.log_weights``: with the same
    generator state both see the same draws.
    """
    mu, logvar = encode(x)
    if mu.ndim != 2 or mu.shape != logvar.shape:
        raise ValueError(f"encode must return (mu, logvar) of shape [B, d], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    for start in range(0, k, chunk_size):
        s = min(chunk_size, k - start)
        z = reparameterize(mu.expand(s, *mu.shape), logvar.expand(s, *logvar.shape), generator)  # [s, B, d]
        log_px_z = decode_log_prob(x, z)
        if log_px_z.shape != z.shape[:2]:
            raise ValueError(f"decode_log_prob must return [S, B] = {tuple(z.shape[:2])}, got {tuple(log_px_z.shape)}")
        yield log_px_z + log_normal_diag(z) - log_normal_diag(z, mu, logvar)  # [s, B]


def iwae_bound_dataset(
    encode: Encoder,
    decode_log_prob: DecoderLogProb,
    X: torch.Tensor,
    k: int,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`iwae_bound` over a whole data set, ``batch_size`` samples at a time, without gradients.

    X: ``[N, ...]`` (e.g. ``[N, 1, 28, 28]``); each batch is moved to ``device`` (None: left where it
    is) before ``encode``. Returns the per-sample bounds ``[N]`` on the CPU; ``.mean()`` is the
    test log-likelihood estimate. Peak memory ~ a few chunks of ``chunk_size * batch_size`` decodings
    (with the automatic chunk size, a few times 2M values, whatever k and batch_size).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(X) == 0:
        raise ValueError("X is empty")
    out = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            xb = X[start : start + batch_size]
            if device is not None:
                xb = xb.to(device)
            out.append(iwae_bound(encode, decode_log_prob, xb, k, chunk_size=chunk_size, generator=generator).cpu())
    return torch.cat(out)

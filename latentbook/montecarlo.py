"""Monte Carlo estimators: of the marginal likelihood log p(x), and of gradients of expectations.

Two families, used by the chapters on latent-variable models, the ELBO and the reparameterisation trick.

**Importance sampling of p(x).** For any proposal r(z) that is positive where p(x, z) is,
p(x) = E_{z~r}[w(z)] with w(z) = p(x, z) / r(z). With r = the prior p(z) the weight is just the
likelihood p(x|z) ("naive" Monte Carlo); with r = an encoder's q(z|x) it is the importance weight of the
IWAE bound (Burda et al. 2015). :func:`log_weights` returns every log-weight ``[k, B]`` instead of only
their log-mean-exp, so a chapter can show how the estimate evolves with the number of samples
(:func:`running_log_mean_exp`) and how concentrated the weights are (:func:`best_weight_share`,
:func:`effective_sample_size`). :func:`pairwise_log_likelihood` scores many images against the *same*
latent samples (each decoded once), which is what makes naive Monte Carlo with 10,000 prior samples
cheap for a whole batch of images.

**Gradients of E_{q_φ}[f(z)]** for a diagonal Gaussian q_φ = N(mu, diag exp(logvar)), with respect to
φ = (mu, logvar): the pathwise (reparameterisation) estimator :func:`pathwise_grad` and the
score-function (REINFORCE) estimator :func:`score_function_grad`. Both return ``repeats`` independent
estimates, each averaged over ``n_samples`` draws, so their mean (unbiasedness) and variance can be measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from latentbook import checks, losses
from latentbook.losses import DecoderLogProb, Encoder, log_normal_diag

__all__ = [
    "log_weights",
    "prior_encoder",
    "pairwise_log_likelihood",
    "log_mean_exp",
    "grouped_log_mean_exp",
    "running_log_mean_exp",
    "best_weight_share",
    "running_best_weight_share",
    "effective_sample_size",
    "pathwise_grad",
    "score_function_grad",
]

VERSION = 1  # of the estimators: bump when a change alters a stored evaluation (evaluate.cached_result)


# ---------------------------------------------------------------------------------------------
# Importance sampling of log p(x)
# ---------------------------------------------------------------------------------------------


def log_weights(
    encode: Encoder,
    decode_log_prob: DecoderLogProb,
    x: Tensor,
    k: int,
    *,
    chunk_size: int = 128,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log importance weights log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x) -> ``[k, B]``.

    The interface of :func:`latentbook.losses.iwae_bound`: ``encode(x) -> (mu, logvar)`` each
    ``[B, d]`` is the diagonal Gaussian proposal q(z|x); ``decode_log_prob(x, z [S, B, d]) -> [S, B]``.
    Samples are drawn ``chunk_size`` at a time exactly as ``iwae_bound`` draws them, so with the same
    generator state ``log_mean_exp(log_weights(...))`` equals ``iwae_bound(...)``. No gradients.
    With :func:`prior_encoder` as ``encode`` the proposal is the prior and each weight is p(x|z_i).
    """
    checks.integer("k", k)
    checks.integer("chunk_size", chunk_size)
    with torch.no_grad():
        return torch.cat(list(losses.log_weight_chunks(encode, decode_log_prob, x, k, chunk_size, generator)))


def prior_encoder(latent_dim: int) -> Encoder:
    """An "encoder" that ignores x and returns the prior N(0, I): ``x [B, ...] -> (zeros, zeros)`` ``[B, d]``.

    As the proposal of :func:`log_weights` it gives naive Monte Carlo, whose weights are p(x|z_i).
    """
    checks.integer("latent_dim", latent_dim)

    def encode(x: Tensor) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(x.shape[0], latent_dim, dtype=x.dtype, device=x.device)
        return zeros, zeros

    return encode


def pairwise_log_likelihood(vae, x: Tensor, z: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """log p(x_b | z_s) for every latent sample s and image b -> ``[S, B]``, decoding each z once.

    vae: a model with ``decoder_params(z)`` and ``likelihood`` (``"bernoulli"`` or ``"gaussian"``),
    e.g. :class:`latentbook.models.VAE`; x: images ``[B, 1, 28, 28]`` (or ``[B, 784]``); z: ``[S, d]``.
    Equal to ``vae.log_px_given_z(x, z[:, None].expand(S, B, d))`` but S decodings instead of S·B:
    the pixel sums become one matrix product (Bernoulli: Σ x·l - softplus(l); Gaussian: expand the square).
    No gradients; the result is on x's device.
    """
    checks.integer("chunk_size", chunk_size)
    if z.ndim != 2:
        raise ValueError(f"z must be [S, d] (one set of samples shared by every image), got {tuple(z.shape)}")
    likelihood = getattr(vae, "likelihood", None)
    if likelihood not in ("bernoulli", "gaussian") or not callable(getattr(vae, "decoder_params", None)):
        raise TypeError(f"expected a VAE with decoder_params() and a bernoulli/gaussian likelihood, got {type(vae).__name__}")
    xf = x.reshape(x.shape[0], -1)
    out = []
    with torch.no_grad():
        for start in range(0, z.shape[0], chunk_size):
            params = vae.decoder_params(z[start : start + chunk_size])
            if likelihood == "bernoulli":
                logits = params["logits"].reshape(-1, xf.shape[1]).to(xf.dtype)  # [s, D]
                out.append(logits @ xf.T - F.softplus(logits).sum(1, keepdim=True))
            else:
                mean = params["mean"].reshape(-1, xf.shape[1]).to(xf.dtype)  # [s, D]
                log_var = torch.as_tensor(params["log_var"], dtype=xf.dtype, device=xf.device)
                if log_var.numel() != 1:
                    raise ValueError("pairwise_log_likelihood needs one global observation variance")
                sq = (mean**2).sum(1, keepdim=True) - 2 * mean @ xf.T + (xf**2).sum(1)  # |x_b - m_s|²
                D = xf.shape[1]
                out.append(-0.5 * (D * (math.log(2 * math.pi) + log_var) + sq * torch.exp(-log_var)))
    return torch.cat(out)


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log((1/k) Σ_i exp(log_w_i)) along ``dim`` (k its length), computed stably with logsumexp."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def grouped_log_mean_exp(log_w: Tensor, k: int) -> Tensor:
    """Log-mean-exp over consecutive groups of k samples: ``log_w [K, ...] -> [K // k, ...]``.

    With log importance weights of samples of q(z|x), each group gives an independent estimate of the
    k-sample bound L_k (Burda et al. 2015), so one set of K samples yields L_k for every k dividing K.
    Trailing samples that do not fill a group are left out.
    """
    checks.integer("k", k)
    if log_w.ndim == 0 or log_w.shape[0] < k:
        raise ValueError(f"need at least k = {k} samples along dim 0, got shape {tuple(log_w.shape)}")
    n = log_w.shape[0] // k
    groups = log_w[: n * k].reshape(n, k, *log_w.shape[1:])
    return torch.logsumexp(groups, dim=1) - math.log(k)


def running_log_mean_exp(log_w: Tensor) -> Tensor:
    """The estimate after the first K samples, for every K: ``[k, ...] -> [k, ...]``.

    Entry K-1 is log((1/K) Σ_{i≤K} exp(log_w_i)); the last entry is :func:`log_mean_exp`.
    """
    if log_w.ndim == 0 or log_w.shape[0] == 0:
        raise ValueError("log_w must be [k, ...] with k >= 1 samples along the first dimension")
    counts = torch.arange(1, log_w.shape[0] + 1, dtype=log_w.dtype, device=log_w.device)
    counts = counts.reshape(-1, *([1] * (log_w.ndim - 1)))
    return torch.logcumsumexp(log_w, 0) - torch.log(counts)


def best_weight_share(log_w: Tensor, dim: int = 0) -> Tensor:
    """max_i w_i / Σ_i w_i along ``dim``: 1/k for equal weights, 1 when one sample carries the estimate."""
    return torch.exp(log_w.amax(dim) - torch.logsumexp(log_w, dim))


def running_best_weight_share(log_w: Tensor) -> Tensor:
    """:func:`best_weight_share` among the first K samples, for every K: ``[k, ...] -> [k, ...]``."""
    if log_w.ndim == 0 or log_w.shape[0] == 0:
        raise ValueError("log_w must be [k, ...] with k >= 1 samples along the first dimension")
    return torch.exp(torch.cummax(log_w, 0).values - torch.logcumsumexp(log_w, 0))


def effective_sample_size(log_w: Tensor, dim: int = 0) -> Tensor:
    """Kish's effective sample size (Σ w)² / Σ w² along ``dim``: k for equal weights, 1 for one dominant weight."""
    return torch.exp(2 * torch.logsumexp(log_w, dim) - torch.logsumexp(2 * log_w, dim))


# ---------------------------------------------------------------------------------------------
# Gradient estimators for E_{z ~ N(mu, diag exp(logvar))}[f(z)]
# ---------------------------------------------------------------------------------------------

GradFn = Callable[[Tensor], Tensor]


def _check_gaussian(mu: Tensor, logvar: Tensor) -> None:
    if not isinstance(mu, Tensor) or not isinstance(logvar, Tensor):
        raise TypeError("mu and logvar must be tensors")
    if mu.ndim != 1 or mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must both be [d], got {tuple(mu.shape)} and {tuple(logvar.shape)}")


def _leaves(mu: Tensor, logvar: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """``r`` independent copies of the parameters, each a leaf of its own graph: ``[r, d]``."""
    return (mu.detach().expand(r, -1).clone().requires_grad_(True),
            logvar.detach().expand(r, -1).clone().requires_grad_(True))


def _f_values(f: GradFn, z: Tensor) -> Tensor:
    fz = f(z)
    if fz.shape != z.shape[:-1]:
        raise ValueError(f"f must map z [..., d] to [...]: got {tuple(fz.shape)} for z {tuple(z.shape)}")
    return fz


def _estimate(
    one_chunk: Callable[[Tensor, Tensor, Tensor], Tensor],
    mu: Tensor, logvar: Tensor, n_samples: int, repeats: int, generator: torch.Generator | None, max_elements: int,
) -> tuple[Tensor, Tensor]:
    """Run ``one_chunk(mu_r, logvar_r, eps) -> surrogate [r]`` over chunks of repeats; collect the gradients."""
    _check_gaussian(mu, logvar)
    checks.integer("n_samples", n_samples)
    checks.integer("repeats", repeats)
    d = mu.shape[0]
    per_chunk = max(1, max_elements // (n_samples * d))
    grads_mu, grads_lv = [], []
    for start in range(0, repeats, per_chunk):
        r = min(per_chunk, repeats - start)
        mu_r, lv_r = _leaves(mu, logvar, r)
        eps = torch.randn(r, n_samples, d, generator=generator, dtype=mu.dtype, device=mu.device)
        surrogate = one_chunk(mu_r, lv_r, eps)  # [r]: repeat i depends only on row i of mu_r, lv_r
        if surrogate.requires_grad:
            g_mu, g_lv = torch.autograd.grad(surrogate.sum(), (mu_r, lv_r), allow_unused=True)
        else:  # f is piecewise constant (e.g. a comparison): its derivative is zero wherever it exists
            g_mu = g_lv = None
        grads_mu.append(torch.zeros_like(mu_r) if g_mu is None else g_mu)
        grads_lv.append(torch.zeros_like(lv_r) if g_lv is None else g_lv)
    return torch.cat(grads_mu), torch.cat(grads_lv)


def pathwise_grad(
    f: GradFn,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    *,
    repeats: int = 1,
    generator: torch.Generator | None = None,
    max_elements: int = 2**22,
) -> tuple[Tensor, Tensor]:
    """Pathwise (reparameterisation) estimates of ∇_(mu, logvar) E_{z~N(mu, diag exp(logvar))}[f(z)].

    Each estimate is (1/S) Σ_s ∇_φ f(mu + exp(½ logvar) ⊙ eps_s), eps_s ~ N(0, I), S = ``n_samples``:
    the randomness no longer depends on φ, so the gradient passes through the sample into f.
    f: a differentiable function ``z [..., d] -> [...]`` (vectorised over the leading dimensions).
    mu, logvar: ``[d]``. Returns ``(grad_mu, grad_logvar)``, each ``[repeats, d]``: independent
    estimates (their mean estimates the gradient, their variance the estimator's variance).
    ``max_elements`` bounds repeats × n_samples × d held at once (repeats are processed in chunks).
    """

    def one_chunk(mu_r: Tensor, lv_r: Tensor, eps: Tensor) -> Tensor:
        z = mu_r[:, None] + torch.exp(0.5 * lv_r)[:, None] * eps  # [r, S, d]
        return _f_values(f, z).mean(1)

    return _estimate(one_chunk, mu, logvar, n_samples, repeats, generator, max_elements)


def score_function_grad(
    f: GradFn,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    *,
    repeats: int = 1,
    baseline: float = 0.0,
    generator: torch.Generator | None = None,
    max_elements: int = 2**22,
) -> tuple[Tensor, Tensor]:
    """Score-function (REINFORCE, likelihood-ratio) estimates of ∇_(mu, logvar) E_{z~q_φ}[f(z)].

    Each estimate is (1/S) Σ_s (f(z_s) - b) ∇_φ log q_φ(z_s), z_s ~ q_φ = N(mu, diag exp(logvar)):
    f is only evaluated, never differentiated (it may be a black box or discrete). ``baseline`` b is a
    constant subtracted from f; since E_q[∇_φ log q_φ] = 0 any constant keeps the estimator unbiased,
    and a good one lowers its variance. Shapes as :func:`pathwise_grad`.
    """
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not math.isfinite(baseline):
        raise ValueError(f"baseline must be a finite number, got {baseline!r}")

    def one_chunk(mu_r: Tensor, lv_r: Tensor, eps: Tensor) -> Tensor:
        with torch.no_grad():
            z = mu_r[:, None] + torch.exp(0.5 * lv_r)[:, None] * eps  # samples: no path back to φ
            fz = _f_values(f, z) - baseline  # [r, S]
        log_q = log_normal_diag(z, mu_r[:, None], lv_r[:, None])  # [r, S], differentiable in φ only
        return (fz * log_q).mean(1)

    return _estimate(one_chunk, mu, logvar, n_samples, repeats, generator, max_elements)

"""From denoising to diffusion (chapter "diffusion"): scores, Langevin dynamics and a small DDPM.

Two halves:

- **Scores in two dimensions.** The score ``∇_x log p(x)`` of a Gaussian mixture and of the mixture
  smoothed by Gaussian noise of scale σ (closed form), the map from a denoiser ``r`` to a score,
  ``(r(x̃) - x̃) / σ²`` (Vincent 2011), and Langevin dynamics, plain or annealed over σ's.
- **DDPM** (Ho, Jain & Abbeel 2020) as a hierarchical VAE whose encoder is fixed: the noise schedule,
  the forward marginal ``q(x_t | x_0)`` (:func:`q_sample`), the posterior ``q(x_{t-1} | x_t, x_0)``
  (:func:`posterior`), each term of the ELBO (:func:`prior_term`, :func:`diffusion_term`,
  :func:`decoder_log_prob`), and :class:`DDPM`, a denoiser for binarised MNIST mapped to {-1, +1}
  whose −ELBO is a bound on ``−log p(x)`` of binary images, in nats like the VAE's.

Time steps are 1-indexed as in the paper: ``t ∈ {1, ..., T}``, ``ᾱ_0 = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from latentbook import checks, evaluate, losses, models

__all__ = [
    "mixture",
    "mixture_score",
    "denoiser_score",
    "langevin",
    "annealed_langevin",
    "Schedule",
    "linear_schedule",
    "q_sample",
    "forward_chain",
    "posterior",
    "gaussian_kl",
    "prior_term",
    "diffusion_term",
    "decoder_log_prob",
    "timestep_embedding",
    "DDPM",
    "negative_elbo",
    "cached_samples",
    "VERSION",
]

VERSION = 1  # of the stored evaluations of this module (negative_elbo): bump when their values change


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)


# ---------------------------------------------------------------------------------------------
# Scores of a Gaussian mixture, and the score a denoiser learns
# ---------------------------------------------------------------------------------------------


def _check_mixture(weights: Tensor, means: Tensor, covs: Tensor) -> None:
    if means.ndim != 2:
        raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
    k, d = means.shape
    if tuple(weights.shape) != (k,):
        raise ValueError(f"weights must be [K] = [{k}], got shape {tuple(weights.shape)}")
    if tuple(covs.shape) != (k, d, d):
        raise ValueError(f"covs must be [K, D, D] = [{k}, {d}, {d}], got shape {tuple(covs.shape)}")
    if bool((weights < 0).any()) or not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-5):
        raise ValueError(f"weights must be non-negative and sum to 1, got {weights.tolist()}")


def mixture(weights: Tensor, means: Tensor, covs: Tensor, sigma: float = 0.0) -> torch.distributions.Distribution:
    """The mixture ``Σ_k w_k N(μ_k, C_k + σ² I)`` as a torch distribution (σ = 0: the mixture itself).

    weights ``[K]``, means ``[K, D]``, covs ``[K, D, D]``. Adding independent N(0, σ² I) noise to a
    sample of the mixture gives a sample of this one: each component's covariance grows by σ² I.
    """
    _check_mixture(weights, means, covs)
    if sigma != 0.0:
        sigma = _positive("sigma", sigma)
    eye = torch.eye(means.shape[1], dtype=covs.dtype, device=covs.device)
    comp = torch.distributions.MultivariateNormal(means, covs + sigma**2 * eye)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=weights), comp)


def mixture_score(x: Tensor, weights: Tensor, means: Tensor, covs: Tensor, sigma: float = 0.0) -> Tensor:
    """``∇_x log p_σ(x)`` in closed form, ``x: [N, D] -> [N, D]``, for ``p_σ = Σ_k w_k N(μ_k, C_k + σ² I)``.

    ``Σ_k r_k(x) (C_k + σ² I)^{-1} (μ_k − x)`` with the responsibilities ``r_k(x) = p(k | x)``
    (a softmax of ``log w_k + log N(x; μ_k, C_k + σ² I)``, stable for points far from every mode).
    """
    dist = mixture(weights, means, covs, sigma)
    if x.ndim != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x must be [N, D] with D = {means.shape[1]}, got shape {tuple(x.shape)}")
    comp = dist.component_distribution
    log_r = torch.log_softmax(comp.log_prob(x[:, None, :]) + torch.log(weights), dim=1)  # [N, K]
    prec = torch.linalg.inv(comp.covariance_matrix)  # [K, D, D]
    pulls = torch.einsum("kij,nkj->nki", prec, means[None] - x[:, None, :])  # [N, K, D]
    return (log_r.exp()[..., None] * pulls).sum(1)


def denoiser_score(denoised: Tensor, noisy: Tensor, sigma: float) -> Tensor:
    """The score a denoiser implies: ``(r(x̃) − x̃) / σ²`` (same shape as ``noisy``).

    For the denoiser that minimises the squared error, ``r(x̃) = E[x | x̃]``, this is exactly
    ``∇ log p_σ(x̃)``, the score of the data smoothed by the noise (Tweedie's formula; Vincent 2011).
    """
    sigma = _positive("sigma", sigma)
    if denoised.shape != noisy.shape:
        raise ValueError(f"denoised {tuple(denoised.shape)} must have the shape of noisy {tuple(noisy.shape)}")
    return (denoised - noisy) / sigma**2


def langevin(score: Callable[[Tensor], Tensor], x: Tensor, *, step: float, n_steps: int,
             generator: torch.Generator | None = None) -> Tensor:
    """Unadjusted Langevin dynamics from ``x: [N, D]``: ``x ← x + (step/2) score(x) + √step z``, ``n_steps`` times.

    For a small step and many steps the chains' distribution approaches the density whose score is
    ``score`` (no gradients are kept). generator: seeded randomness for reproducible chains.
    """
    step = _positive("step", step)
    n_steps = checks.integer("n_steps", n_steps, minimum=0)
    with torch.no_grad():
        for _ in range(n_steps):
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + 0.5 * step * score(x) + math.sqrt(step) * z
    return x


def annealed_langevin(score: Callable[[Tensor, float], Tensor], sigmas: Sequence[float], x: Tensor, *,
                      step: float, n_steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019): for each σ of ``sigmas`` (largest first),
    :func:`langevin` on ``score(x, σ)`` with step ``step · σ² / σ_last²``; ``x: [N, D] -> [N, D]``.

    Large σ's smooth the density, so chains cross between modes; the last, smallest σ sharpens them.
    """
    sig = [_positive("each sigma", s) for s in sigmas]
    if not sig or any(a < b for a, b in zip(sig, sig[1:])):
        raise ValueError(f"sigmas must be a non-empty, decreasing list, got {list(sigmas)}")
    for s in sig:
        x = langevin(lambda y, s=s: score(y, s), x, step=step * s**2 / sig[-1] ** 2, n_steps=n_steps,
                     generator=generator)
    return x


# ---------------------------------------------------------------------------------------------
# The forward process: schedule, marginal, posterior
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A noise schedule ``β_1..β_T`` (float64, index 0 is t = 1) and what follows from it:
    ``alpha = 1 − β``, ``alpha_bar[t−1] = Π_{s≤t} α_s`` and ``posterior_var[t−1] = β̃_t``
    ``= β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)`` (0 at t = 1)."""

    betas: Tensor

    def __post_init__(self):
        b = self.betas
        if not isinstance(b, Tensor) or b.ndim != 1 or len(b) < 2:
            raise ValueError("betas must be a 1-D tensor of at least 2 noise levels")
        if bool((b <= 0).any()) or bool((b >= 1).any()):
            raise ValueError("every beta must lie in (0, 1)")
        # ᾱ_0..ᾱ_T once (float64, CPU): the ELBO asks for it T times per batch
        ab = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - b.double().cpu(), 0)])
        object.__setattr__(self, "_ab", ab)

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> Tensor:
        return 1 - self.betas.double()

    @property
    def alpha_bar(self) -> Tensor:
        return self._ab[1:]

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """ᾱ_t for integer ``t`` in 0..T (ᾱ_0 = 1), float64 on t's device."""
        return self._ab.to(t.device)[t]

    @property
    def posterior_var(self) -> Tensor:
        ab = self.alpha_bar
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return self.betas.double() * (1 - ab_prev) / (1 - ab)

    def check_t(self, t: Any, n: int, minimum: int = 1) -> Tensor:
        """``t`` as a ``[n]`` long tensor of steps in ``minimum..T`` (an int is broadcast)."""
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((n,), t, dtype=torch.long)
        if not isinstance(t, Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.shape != (n,):
            raise ValueError(f"t must be an int or a [{n}] tensor of integer time steps, got {t!r}")
        if n and (int(t.min()) < minimum or int(t.max()) > self.T):
            raise ValueError(f"t must lie in {minimum}..{self.T}, got values in {int(t.min())}..{int(t.max())}")
        return t.long()


def linear_schedule(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Schedule:
    """Ho et al.'s schedule: ``β_t`` linear from ``beta_1`` to ``beta_T`` over ``T`` steps."""
    T = checks.integer("T", T, minimum=2)
    beta_1, beta_T = _positive("beta_1", beta_1), _positive("beta_T", beta_T)
    if not beta_1 <= beta_T < 1:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got {beta_1}, {beta_T}")
    return Schedule(torch.linspace(beta_1, beta_T, T, dtype=torch.float64))


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """``[B]`` float64 -> ``[B, 1, ...]`` in ``like``'s dtype, to scale a batch of ``like``'s shape."""
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: Tensor, t: Any, eps: Tensor, schedule: Schedule) -> Tensor:
    """A draw of ``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)``: ``√ᾱ_t x_0 + √(1 − ᾱ_t) ε``.

    x0, eps: ``[B, ...]``; t: an int or ``[B]`` steps in 1..T (``t = 0`` is allowed: it returns x0).
    """
    if eps.shape != x0.shape:
        raise ValueError(f"eps {tuple(eps.shape)} must have the shape of x0 {tuple(x0.shape)}")
    t = schedule.check_t(t, x0.shape[0], minimum=0)
    ab = schedule.alpha_bar_at(t)
    return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * eps


def forward_chain(x0: Tensor, t: int, schedule: Schedule, *, generator: torch.Generator | None = None) -> Tensor:
    """Run the forward chain one step at a time, ``x_s = √α_s x_{s−1} + √β_s z``, for s = 1..t -> ``x_t``."""
    t = int(schedule.check_t(t, 1)[0])
    x = x0
    for s in range(t):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = math.sqrt(float(schedule.alphas[s])) * x + math.sqrt(float(schedule.betas[s])) * z
    return x


def _posterior_between(x0: Tensor, x_t: Tensor, ab_t: Tensor, ab_s: Tensor) -> tuple[Tensor, Tensor]:
    """``q(x_s | x_t, x_0)`` for steps s < t given by ``ᾱ_t, ᾱ_s`` (``[B]``): mean ``[B, ...]``, var ``[B]``.

    With ``α_{t|s} = ᾱ_t / ᾱ_s`` and ``β_{t|s} = 1 − α_{t|s}``: mean = ``√ᾱ_s β_{t|s} / (1 − ᾱ_t) x_0 +
    √α_{t|s} (1 − ᾱ_s) / (1 − ᾱ_t) x_t``, var = ``β_{t|s} (1 − ᾱ_s) / (1 − ᾱ_t)`` (Bayes' rule for Gaussians).
    """
    a_ts = ab_t / ab_s
    b_ts = 1 - a_ts
    c0 = ab_s.sqrt() * b_ts / (1 - ab_t)
    ct = a_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
    return _bcast(c0, x0) * x0 + _bcast(ct, x_t) * x_t, b_ts * (1 - ab_s) / (1 - ab_t)


def posterior(x0: Tensor, x_t: Tensor, t: Any, schedule: Schedule) -> tuple[Tensor, Tensor]:
    """``q(x_{t−1} | x_t, x_0) = N(mean, var I)``: ``(mean [B, ...], var [B])`` for t in 1..T.

    mean = ``√ᾱ_{t−1} β_t / (1 − ᾱ_t) x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) x_t``; var = ``β̃_t``
    (0 at t = 1, where x_0 is known).
    """
    if x_t.shape != x0.shape:
        raise ValueError(f"x_t {tuple(x_t.shape)} must have the shape of x0 {tuple(x0.shape)}")
    t = schedule.check_t(t, x0.shape[0])
    return _posterior_between(x0, x_t, schedule.alpha_bar_at(t), schedule.alpha_bar_at(t - 1))


# ---------------------------------------------------------------------------------------------
# The ELBO's terms
# ---------------------------------------------------------------------------------------------


def gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """``KL(N(mean_q, var_q I) || N(mean_p, var_p I))`` summed over all but the first dim -> ``[B]``.

    means ``[B, ...]``; variances ``[B]`` (one per image, as in the DDPM) or of the means' shape.
    """
    if mean_q.shape != mean_p.shape:
        raise ValueError(f"mean_p {tuple(mean_p.shape)} must have the shape of mean_q {tuple(mean_q.shape)}")
    vq = var_q if var_q.shape == mean_q.shape else _bcast(var_q, mean_q).expand_as(mean_q)
    vp = var_p if var_p.shape == mean_p.shape else _bcast(var_p, mean_p).expand_as(mean_p)
    if bool((vq <= 0).any()) or bool((vp <= 0).any()):
        raise ValueError("variances must be positive (the KL to or from a point mass is infinite)")
    return losses.gaussian_kl_between(mean_q, vq.log(), mean_p, vp.log())


def prior_term(x0: Tensor, schedule: Schedule) -> Tensor:
    """``L_T = KL(q(x_T | x_0) || N(0, I))`` per image -> ``[B]`` nats (no parameters: ~0 for a good schedule)."""
    ab = schedule.alpha_bar[-1].to(x0.device)
    ab_b = ab.expand(x0.shape[0])
    return gaussian_kl(ab.sqrt().to(x0.dtype) * x0, 1 - ab_b, torch.zeros_like(x0), torch.ones_like(ab_b))


def diffusion_term(x0: Tensor, x_t: Tensor, t: Any, x0_hat: Tensor, schedule: Schedule) -> Tensor:
    """``L_{t−1} = KL(q(x_{t−1} | x_t, x_0) || p_θ(x_{t−1} | x_t))`` per image -> ``[B]`` nats, t in 2..T.

    ``p_θ(x_{t−1} | x_t) = N(μ_θ, β̃_t I)`` with ``μ_θ`` the posterior mean at the model's guess
    ``x0_hat`` of x_0 (as the ε-parameterisation gives). Same variance, so the KL is
    ``‖μ̃ − μ_θ‖² / (2 β̃_t)``.
    """
    t = schedule.check_t(t, x0.shape[0], minimum=2)
    if x0_hat.shape != x0.shape:
        raise ValueError(f"x0_hat {tuple(x0_hat.shape)} must have the shape of x0 {tuple(x0.shape)}")
    mean_q, var = posterior(x0, x_t, t, schedule)
    mean_p, _ = posterior(x0_hat, x_t, t, schedule)
    return gaussian_kl(mean_q, var, mean_p, var)


def decoder_log_prob(x0: Tensor, mean: Tensor, sigma: float) -> Tensor:
    """``log p_θ(x_0 | x_1)`` per image -> ``[B]`` for binary ``x0 ∈ {−1, +1}``: Ho et al.'s discretised
    decoder with two levels, ``p(x_0 = +1 | x_1) = Φ(μ_θ(x_1) / σ_1)`` and ``p(−1) = Φ(−μ/σ_1)``, so
    ``log p = Σ_i log Φ(x_0,i μ_i / σ_1)`` (``torch.special.log_ndtr``: finite far in the tails)."""
    sigma = _positive("sigma", sigma)
    if mean.shape != x0.shape:
        raise ValueError(f"mean {tuple(mean.shape)} must have the shape of x0 {tuple(x0.shape)}")
    if bool(((x0 != 1) & (x0 != -1)).any()):
        raise ValueError("x0 must hold binary pixels in {-1, +1} (map {0, 1} images by 2x - 1)")
    return torch.special.log_ndtr(x0 * mean / sigma).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# The denoiser: an MLP with a sinusoidal time embedding
# ---------------------------------------------------------------------------------------------


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of steps ``t: [B]`` -> ``[B, dim]`` (Vaswani et al. 2017; as in Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


@models.register("ddpm")
class DDPM(nn.Module):
    """A DDPM for binarised MNIST in {−1, +1} (Ho et al. 2020), linear schedule ``beta_1..beta_T``.

    The network ``784 (+ time) -> hidden... -> 784`` is an MLP; each hidden layer adds a learned
    projection of the time embedding. parameterisation: ``"eps"`` (the network's output is ε̂, as in
    Ho et al.) or ``"binary"``: it outputs half the log-odds ``h`` of each pixel being +1 *given the
    other pixels*; the pixel's own noisy value adds its exact evidence, so
    ``x̂_0 = tanh(h + √ᾱ_t x_t / (1 − ᾱ_t))`` (the posterior mean of a ±1 pixel; see the chapter),
    and ``ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)``. Either way the loss is Ho et al.'s ε-prediction error.
    """

    arch: ClassVar[str]
    version: ClassVar[int] = 1  # see models.register

    def __init__(self, hidden: Sequence[int] = (1024, 1024), time_dim: int = 128, T: int = 1000,
                 beta_1: float = 1e-4, beta_T: float = 0.02, parameterisation: str = "binary"):
        super().__init__()
        self.hidden = tuple(checks.integer("each entry of hidden", h) for h in hidden)
        if not self.hidden:
            raise ValueError("hidden must list at least one layer width")
        self.time_dim = checks.integer("time_dim", time_dim, minimum=2)
        self.schedule = linear_schedule(T, beta_1, beta_T)
        self.T, self.beta_1, self.beta_T = T, float(beta_1), float(beta_T)
        if parameterisation not in ("eps", "binary"):
            raise ValueError(f"parameterisation must be 'eps' or 'binary', got {parameterisation!r}")
        self.parameterisation = parameterisation
        sizes = [models.D, *self.hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.time = nn.ModuleList(nn.Linear(self.time_dim, b) for b in self.hidden)
        self.out = nn.Linear(self.hidden[-1], models.D)
        self.act = nn.SiLU()
        # ᾱ_t for t = 0..T, as a buffer so it moves with the model (float32 inside the network)
        self.register_buffer("ab", torch.cat([torch.ones(1, dtype=torch.float64), self.schedule.alpha_bar]).float(),
                             persistent=False)

    def config(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "time_dim": self.time_dim, "T": self.T, "beta_1": self.beta_1,
                "beta_T": self.beta_T, "parameterisation": self.parameterisation}

    # -- the network ----------------------------------------------------------------------

    def _net(self, x_t: Tensor, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.time_dim).to(x_t.dtype)  # float64 too (the golden-weights test)
        h = x_t.flatten(1)
        for layer, time in zip(self.layers, self.time):
            h = self.act(layer(h) + time(emb))
        return self.out(h).view_as(x_t)

    def predict(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(ε̂, x̂_0)``, each ``[B, 1, 28, 28]``, for noisy images ``x_t`` at steps ``t: [B]`` in 1..T."""
        out = self._net(x_t, t)
        ab = self.ab[t].view(-1, 1, 1, 1)
        if self.parameterisation == "eps":
            return out, (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
        x0_hat = torch.tanh(out + ab.sqrt() * x_t / (1 - ab))
        return (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt(), x0_hat

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Ho et al.'s simple loss: ``‖ε − ε̂(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²`` (mean per pixel), t ~ U{1..T}.

        x: binary images in {0, 1} ``[B, 1, 28, 28]`` (the trainer binarises dynamically), mapped to {−1, +1}.
        """
        x0 = 2 * models.as_images(x) - 1
        t = torch.randint(1, self.T + 1, (x0.shape[0],), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        ab = self.ab[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        eps_hat, _ = self.predict(x_t, t)
        mse = (eps - eps_hat).pow(2).mean()
        return {"loss": mse}

    # -- sampling ---------------------------------------------------------------------------

    def decoder_mean(self, x_1: Tensor) -> Tensor:
        """``μ_θ(x_1)``, the mean of the last reverse step, ``[B, 1, 28, 28]``."""
        t = torch.ones(x_1.shape[0], dtype=torch.long, device=x_1.device)
        _, x0_hat = self.predict(x_1, t)
        mean, _ = posterior(x0_hat, x_1, t.cpu(), self.schedule)
        return mean

    def sampling_steps(self, steps: int | None = None) -> list[int]:
        """The levels ``1 = τ_1 < ... < τ_S = T`` that :meth:`sample` visits: all T, or ``steps`` evenly spaced."""
        if steps is None:
            return list(range(1, self.T + 1))
        grid = torch.linspace(1, self.T, checks.integer("steps", steps, minimum=2), dtype=torch.float64)
        return sorted({int(round(v)) for v in grid.tolist()})

    @torch.no_grad()
    def sample(self, n: int, *, steps: int | None = None, generator: torch.Generator | None = None,
               trajectory: Sequence[int] = ()) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        """``n`` images ``[n, 1, 28, 28]``: the probabilities ``p(x_0 = +1 | x_1) = Φ(μ_θ(x_1) / σ_1)``
        (grey levels in [0, 1], like a VAE's decoded means) at the end of ancestral sampling.

        steps: ``None`` runs all T reverse steps (Ho et al.'s sampler); fewer visit evenly spaced steps
        ``T = τ_S > ... > τ_1 = 1`` and jump with the posterior ``q(x_{τ_{i−1}} | x_{τ_i}, x̂_0)`` (the
        respaced sampler of Nichol & Dhariwal 2021). trajectory: steps t at which to keep ``x_t`` and
        ``x̂_0``; then ``(images, {t: (x_t, x̂_0)})`` is returned.
        """
        n = checks.integer("n", n)
        device = self.ab.device
        taus = self.sampling_steps(steps)
        keep = set(trajectory)
        traj: dict[int, Tensor] = {}
        x = torch.randn(n, *models.IMAGE_SHAPE, generator=generator, device=generator.device if generator else device)
        x = x.to(device)
        for i in range(len(taus) - 1, 0, -1):
            t, s = taus[i], taus[i - 1]
            tt = torch.full((n,), t, dtype=torch.long, device=device)
            _, x0_hat = self.predict(x, tt)
            x0_hat = x0_hat.clamp(-1, 1)
            if t in keep:
                traj[t] = (x.clone(), x0_hat.clone())
            ab = self.schedule.alpha_bar_at(torch.tensor([t, s])).to(device)
            mean, var = _posterior_between(x0_hat, x, ab[:1].expand(n), ab[1:].expand(n))
            z = torch.randn(x.shape, generator=generator, device=generator.device if generator else device)
            x = mean + _bcast(var.sqrt(), x) * z.to(device)
        mean = self.decoder_mean(x)
        if 1 in keep:
            traj[1] = (x.clone(), mean.clamp(-1, 1))
        probs = torch.special.ndtr(mean / math.sqrt(self.beta_1))
        return (probs, traj) if keep else probs


# ---------------------------------------------------------------------------------------------
# The negative ELBO of binary images, term by term
# ---------------------------------------------------------------------------------------------


def _elbo_terms(model: DDPM, x_bin: Tensor, *, batch_size: int, n_t: int | None,
                generator: torch.Generator) -> dict[str, Tensor]:
    sched = model.schedule
    device = model.ab.device
    ab = sched._ab  # ᾱ_0..ᾱ_T
    # L_{t-1} = w_t ‖x_0 − x̂_0‖² with w_t = ᾱ_{t−1} β_t² / (2 β̃_t (1 − ᾱ_t)²) (diffusion_term, tested equal)
    ts = torch.arange(2, sched.T + 1)
    w = (ab[ts - 1] * sched.betas[ts - 1] ** 2 / (2 * sched.posterior_var[ts - 1] * (1 - ab[ts]) ** 2))
    if n_t is None:
        strata = [(t, 1.0) for t in ts.tolist()]
    prior, diff, dec = [], [], []
    with torch.no_grad(), evaluate._eval_mode(model):
        for start in range(0, x_bin.shape[0], batch_size):
            x0 = (2 * x_bin[start : start + batch_size] - 1).to(device)
            b = x0.shape[0]
            prior.append(prior_term(x0.double(), sched).cpu())
            if n_t is not None:  # one t drawn uniformly in each of n_t equal strata of 2..T, weighted by its size
                edges = torch.linspace(0, len(ts), n_t + 1).round().long().tolist()
                strata = []
                for lo, hi in zip(edges[:-1], edges[1:]):
                    i = lo + int(torch.randint(hi - lo, (1,), generator=generator, device=generator.device))
                    strata.append((int(ts[i]), float(hi - lo)))
            d = torch.zeros(b, dtype=torch.float64, device=device)
            for t, size in strata:
                eps = torch.randn(x0.shape, generator=generator, device=device)
                x_t = q_sample(x0, t, eps, sched)
                _, x0_hat = model.predict(x_t, torch.full((b,), t, dtype=torch.long, device=device))
                d += size * float(w[t - 2]) * (x0 - x0_hat).pow(2).flatten(1).sum(1).double()
            diff.append(d.cpu())
            eps = torch.randn(x0.shape, generator=generator, device=device)
            x_1 = q_sample(x0, 1, eps, sched)
            mean = model.decoder_mean(x_1)
            dec.append(-decoder_log_prob(x0.double().cpu(), mean.double().cpu(), math.sqrt(model.beta_1)))
    out = {"prior": torch.cat(prior).float(), "diffusion": torch.cat(diff).float(), "decoder": torch.cat(dec).float()}
    out["total"] = out["prior"] + out["diffusion"] + out["decoder"]
    return out


def negative_elbo(model: DDPM, x_bin: Tensor, *, seed: int = 0, batch_size: int = 250, n_t: int | None = None,
                  cache: bool = False) -> dict[str, Tensor]:
    """The DDPM's −ELBO of binary images ``x_bin: [N, 1, 28, 28]`` in {0, 1}, per image, in nats:
    ``{"prior": L_T, "diffusion": Σ_{t=2}^T L_{t−1}, "decoder": L_0, "total": their sum}``, each ``[N]``.

    n_t: None computes every one of the T terms (one draw of ``x_t`` per term and image, seeded); an int
    draws one t in each of ``n_t`` equal strata of 2..T (per batch) and weighs its term by the stratum's
    size. Either way the total is an unbiased estimate of the bound, ``−log p(x) ≤ E[total]``. T (or
    ``n_t``) forward passes per batch: ``cache=True`` stores the result (:func:`latentbook.evaluate.cached_result`).
    """
    if not isinstance(model, DDPM):
        raise TypeError(f"model must be a DDPM, got {type(model).__name__}")
    x_bin = checks.images("x_bin", x_bin)
    if bool(((x_bin != 0) & (x_bin != 1)).any()):
        raise ValueError("x_bin must hold binary images (0s and 1s): the bound is on a probability of binary images")
    checks.integer("batch_size", batch_size)
    if n_t is not None:
        checks.integer("n_t", n_t)
        if n_t > model.T - 1:
            raise ValueError(f"n_t must be at most T - 1 = {model.T - 1} (the number of terms L_1..L_(T-1)), got {n_t}")

    def compute() -> dict[str, Tensor]:
        gen = torch.Generator(model.ab.device).manual_seed(seed)
        return _elbo_terms(model, x_bin, batch_size=batch_size, n_t=n_t, generator=gen)

    if not cache:
        return compute()
    params = {"seed": seed, "batch_size": batch_size, "n_t": n_t, "diffusion": VERSION}
    return evaluate.cached_result("ddpm_negative_elbo", model, x_bin, params, compute)


def cached_samples(model: DDPM, n: int, *, steps: int | None = None, seed: int = 0) -> Tensor:
    """``model.sample(n, steps=steps)`` from a generator seeded with ``seed`` -> ``[n, 1, 28, 28]``, computed
    once for these weights and stored (:func:`latentbook.evaluate.cached_result`): hundreds of samples
    take tens of seconds on a CPU, and a warm chapter should take none."""
    if not isinstance(model, DDPM):
        raise TypeError(f"model must be a DDPM, got {type(model).__name__}")
    n = checks.integer("n", n)
    device = model.ab.device

    def compute() -> dict[str, Tensor]:
        gen = torch.Generator(device).manual_seed(seed)
        return {"samples": model.sample(n, steps=steps, generator=gen).cpu()}

    params = {"n": n, "steps": steps, "seed": seed, "device": device.type, "diffusion": VERSION}
    # cached_result keys on a tensor of inputs; a sampler has none, so its settings stand in for them
    found = evaluate.cached_result("ddpm_samples", model, torch.tensor([float(n), float(steps or 0)]), params, compute)
    return found["samples"].to(device)

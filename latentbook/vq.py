"""Discrete codes: vector quantisation, the VQ-VAE (van den Oord et al. 2017) and priors over its codes.

A VQ-VAE's encoder gives ``m`` vectors of dimension ``e`` per image, ``z_e: [B, m, e]``; each is replaced by
its nearest vector of a learned codebook ``[K, e]`` (:func:`quantize`), so an image's code is ``m`` symbols
from ``{0, ..., K-1}``: ``m log2 K`` bits at most. The decoder sees the quantised vectors ``z_q``; the
gradient skips the (piecewise constant) rounding by the straight-through estimator (:func:`straight_through`).
The codebook is trained by its own loss, the encoder is held near it by the commitment loss
(:func:`codebook_loss`, :func:`commitment_loss`).

Usage of the codebook is measured by :func:`perplexity` (``exp`` of the usage entropy: ``K`` when every
code is used equally, 1 when one code takes everything) and :func:`dead_codes`. Two remedies for dead codes:
restarts (``restarts=True``: a code that no encoder output has chosen for a while is moved onto one; the
book's chapter measures this one) and a k-means initialisation of the codebook on the encoder's outputs for
the first training batch (``init="kmeans"``: :func:`kmeans`, built from :func:`kmeans_step`, one step of
Lloyd's algorithm).

Sampling needs a prior over the codes: :class:`CategoricalPrior` (independent positions, closed-form
maximum likelihood with Laplace smoothing) and :class:`ARPrior` (a masked MLP, MADE, giving
``p(c_i | c_<i)``), trained by :func:`fit_ar_prior` and kept in the store by :func:`ar_prior_cached`.

    model = models.build({"arch": "vq_vae", "n_codes": 8, "codebook_size": 16})
    z_q, idx = quantize(z_e, model.codebook)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from latentbook import checks, losses, models, store, train

__all__ = [
    "VERSION",
    "squared_distances",
    "quantize",
    "straight_through",
    "codebook_loss",
    "commitment_loss",
    "code_usage",
    "perplexity",
    "dead_codes",
    "kmeans_step",
    "kmeans",
    "VQVAE",
    "CategoricalPrior",
    "ARPrior",
    "fit_ar_prior",
    "ar_prior_cached",
    "all_codes",
    "codes_of",
    "decode_codes_of",
]

VERSION = 1  # of the priors' training (fit_ar_prior) and of what ar_prior_cached stores: bump on a change


# ---------------------------------------------------------------------------------------------
# Quantisation
# ---------------------------------------------------------------------------------------------


def _check_codebook(codebook: Any) -> Tensor:
    if not isinstance(codebook, Tensor) or codebook.ndim != 2 or not codebook.is_floating_point():
        got = tuple(codebook.shape) if isinstance(codebook, Tensor) else type(codebook).__name__
        raise ValueError(f"codebook must be a float tensor [K, e] of K code vectors, got {got}")
    if codebook.shape[0] < 2:
        raise ValueError(f"codebook must hold K >= 2 code vectors, got K = {codebook.shape[0]}")
    return codebook


def _check_vectors(name: str, z: Any, e: int) -> Tensor:
    if not isinstance(z, Tensor) or z.ndim < 1 or not z.is_floating_point() or z.shape[-1] != e:
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{name} must be a float tensor [..., e] with e = {e} (the codebook's dimension), got {got}")
    return z


def _check_K(K: Any) -> int:
    if isinstance(K, bool) or not isinstance(K, int) or K < 2:
        raise ValueError(f"K (the codebook size) must be an integer >= 2, got {K!r}")
    return K


def _check_indices(name: str, indices: Any, K: int) -> Tensor:
    if not isinstance(indices, Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of code indices, got "
                         f"{indices.dtype if isinstance(indices, Tensor) else type(indices).__name__}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= K):
        raise ValueError(f"{name} must lie in 0..{K - 1} (K = {K}), got values from "
                         f"{int(indices.min())} to {int(indices.max())}")
    return indices.long()


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """``‖z_n − e_k‖²`` for ``z: [N, e]`` and ``codebook: [K, e]`` -> ``[N, K]``.

    Computed from the differences, not as ``‖z‖² − 2 z·e + ‖e‖²``: that expansion rounds differently for
    two codes at the same distance and would break exact ties at random.
    """
    return (z[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)


def quantize(z_e: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest code of each vector: ``z_e: [..., e]``, ``codebook: [K, e]`` -> ``(z_q [..., e], indices [...])``.

    ``indices`` (int64) is the argmin of the squared distance, the lowest index on a tie; ``z_q =
    codebook[indices]``, differentiable in the codebook (not in ``z_e``: see :func:`straight_through`).
    """
    codebook = _check_codebook(codebook)
    z_e = _check_vectors("z_e", z_e, codebook.shape[1])
    flat = z_e.detach().reshape(-1, codebook.shape[1])
    # in chunks, so that [N, K, e] differences stay small for a whole test set
    idx = torch.cat([squared_distances(flat[i:i + 4096], codebook.detach()).argmin(1)
                     for i in range(0, flat.shape[0], 4096)]) if flat.shape[0] else flat.new_zeros(0, dtype=torch.long)
    idx = idx.reshape(z_e.shape[:-1])
    return codebook[idx], idx


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    """``z_e + (z_q − z_e).detach()``: the value of ``z_q``, the gradient of ``z_e`` (Bengio et al. 2013).

    Forward, the decoder sees the quantised vectors; backward, ``∂L/∂z_e = ∂L/∂z_q``: the rounding is
    treated as the identity, so the encoder receives the decoder's gradient unchanged.
    """
    if not isinstance(z_e, Tensor) or not isinstance(z_q, Tensor) or z_e.shape != z_q.shape:
        raise ValueError(f"z_e and z_q must be tensors of one shape, got "
                         f"{getattr(z_e, 'shape', type(z_e).__name__)} and {getattr(z_q, 'shape', type(z_q).__name__)}")
    return z_e + (z_q - z_e).detach()


def codebook_loss(z_e: Tensor, z_q: Tensor) -> Tensor:
    """``‖sg[z_e] − z_q‖²`` per vector: ``[..., e] -> [...]``. Moves the codes toward the encoder's
    outputs; no gradient reaches the encoder (``sg`` = stop gradient, ``detach``)."""
    if z_e.shape != z_q.shape:
        raise ValueError(f"z_e and z_q must have one shape, got {tuple(z_e.shape)} and {tuple(z_q.shape)}")
    return (z_e.detach() - z_q).pow(2).sum(-1)


def commitment_loss(z_e: Tensor, z_q: Tensor, beta: float = 0.25) -> Tensor:
    """``β ‖z_e − sg[z_q]‖²`` per vector: ``[..., e] -> [...]``. Keeps the encoder's outputs near their codes
    (they could otherwise grow without bound); no gradient reaches the codebook."""
    if z_e.shape != z_q.shape:
        raise ValueError(f"z_e and z_q must have one shape, got {tuple(z_e.shape)} and {tuple(z_q.shape)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta (the commitment weight) must be a number >= 0, got {beta!r}")
    return beta * (z_e - z_q.detach()).pow(2).sum(-1)


# ---------------------------------------------------------------------------------------------
# Codebook usage
# ---------------------------------------------------------------------------------------------


def code_usage(indices: Tensor, K: int) -> Tensor:
    """How often each code is used: ``indices`` (any shape, values in 0..K-1) -> counts ``[K]`` (int64)."""
    K = _check_K(K)
    return torch.bincount(_check_indices("indices", indices, K).reshape(-1), minlength=K)


def perplexity(indices: Tensor, K: int) -> float:
    """``exp(H)`` of the codes' empirical distribution ``p_k = n_k / N`` (``H`` in nats, ``0 log 0 = 0``):
    the number of equally used codes that would have the same entropy, between 1 and K."""
    counts = code_usage(indices, K).double()
    if counts.sum() == 0:
        raise ValueError("indices is empty: perplexity needs at least one code")
    p = counts / counts.sum()
    return math.exp(-torch.special.xlogy(p, p).sum().item())


def dead_codes(indices: Tensor, K: int) -> int:
    """How many of the K codes ``indices`` never uses."""
    return int((code_usage(indices, K) == 0).sum())


# ---------------------------------------------------------------------------------------------
# k-means: the codebook update, and the remedy for dead codes
# ---------------------------------------------------------------------------------------------


def kmeans_step(x: Tensor, codebook: Tensor) -> Tensor:
    """One step of Lloyd's algorithm: ``x: [N, e]``, ``codebook: [K, e]`` -> the new codebook ``[K, e]``.

    Each code moves to the mean of the vectors assigned to it (:func:`quantize`); a code assigned
    nothing stays where it is. It is where a gradient step of size ``1 / (2 n_k)`` on the summed
    :func:`codebook_loss` takes code ``k`` (``n_k`` vectors assigned), and what the EMA update of the
    VQ-VAE approaches.
    """
    codebook = _check_codebook(codebook)
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a tensor [N, e] of vectors, got {getattr(x, 'shape', type(x).__name__)}")
    _check_vectors("x", x, codebook.shape[1])
    _, idx = quantize(x, codebook)
    K = codebook.shape[0]
    counts = torch.bincount(idx, minlength=K).to(x.dtype)
    sums = torch.zeros_like(codebook).index_add_(0, idx, x.to(codebook.dtype))
    used = counts > 0
    out = codebook.detach().clone()
    out[used] = sums[used] / counts[used, None]
    return out


def kmeans(x: Tensor, K: int, *, iters: int = 20, generator: torch.Generator | None = None) -> Tensor:
    """k-means of ``x: [N, e]`` -> codebook ``[K, e]``: K distinct rows of ``x`` drawn with ``generator``
    (seeded: the same codebook every time), then ``iters`` steps of :func:`kmeans_step`. Needs N >= K."""
    K = _check_K(K)
    iters = checks.integer("iters", iters, minimum=0)
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [N, e], got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[0] < K:
        raise ValueError(f"k-means needs at least K = {K} vectors, got N = {x.shape[0]}")
    x = x.detach()
    start = torch.randperm(x.shape[0], generator=generator, device=x.device if generator is None else generator.device)
    codebook = x[start[:K].to(x.device)].clone()
    for _ in range(iters):
        codebook = kmeans_step(x, codebook)
    return codebook


# ---------------------------------------------------------------------------------------------
# The VQ-VAE
# ---------------------------------------------------------------------------------------------


@models.register("vq_vae")
class VQVAE(nn.Module):
    """VQ-VAE with MLP encoder and decoder and a Bernoulli decoder (pixel logits).

    encoder ``784 -> hidden... -> m·e``, read as ``m = n_codes`` vectors of dimension ``e = code_dim``;
    each is quantised to the nearest of ``K = codebook_size`` code vectors (one codebook shared by the m
    positions); the decoder ``m·e -> reversed(hidden)... -> 784`` maps the quantised vectors to logits.
    init: ``"random"`` (codebook uniform in ``±1/K``, as in the reference implementation) or ``"kmeans"``
    (k-means of the encoder's outputs on the first training batch). restarts: during training, a code whose
    usage (an exponential moving average of its count per batch, decay ``0.99``) falls below
    ``RESTART_BELOW`` is moved onto a random encoder output of the batch (a *dead-code restart*, as in
    Dhariwal et al. 2020 and Łańcucki et al. 2020). Both act in training only: the forward pass and the
    evaluation stay deterministic.

    ``encode`` returns the *quantised* code ``z_q`` (what the decoder sees), so ``decode(encode(x))`` is the
    reconstruction; ``encode_continuous`` gives the encoder's ``z_e`` and ``codes`` the indices ``[B, m]``.
    """

    arch: ClassVar[str]
    version: ClassVar[int] = 1  # see models.register

    RESTART_BELOW: ClassVar[float] = 0.1  # EMA usage (codes per batch) under which a code is restarted
    USAGE_DECAY: ClassVar[float] = 0.99

    def __init__(self, n_codes: int = 8, codebook_size: int = 16, code_dim: int = 8,
                 hidden: Sequence[int] = (512, 256, 128), init: str = "random", restarts: bool = False):
        super().__init__()
        self.n_codes = checks.integer("n_codes", n_codes)
        self.codebook_size = _check_K(codebook_size)
        self.code_dim = checks.integer("code_dim", code_dim)
        self.hidden = models._int_tuple("hidden", hidden)
        self.init = models._choice("init", init, ("random", "kmeans"))
        if not isinstance(restarts, bool):
            raise ValueError(f"restarts must be True or False, got {restarts!r}")
        self.restarts = restarts
        width = self.n_codes * self.code_dim
        self.encoder = models.mlp_encoder(width, self.hidden)
        self.decoder = models.mlp_decoder(width, self.hidden)
        K = self.codebook_size
        self.codebook = nn.Parameter(torch.empty(K, self.code_dim).uniform_(-1.0 / K, 1.0 / K))
        # saved with the weights: a stored k-means model is never initialised again
        self.register_buffer("initialised", torch.tensor(self.init == "random"))
        if self.restarts:  # EMA of each code's count per training batch; 0 at first: every code "dead"
            self.register_buffer("usage", torch.zeros(K))

    def config(self) -> dict[str, Any]:
        cfg = {"n_codes": self.n_codes, "codebook_size": self.codebook_size, "code_dim": self.code_dim,
               "hidden": list(self.hidden), "init": self.init}
        if self.restarts:  # listed only when set
            cfg["restarts"] = True
        return cfg

    @property
    def bits(self) -> float:
        """The code's size under a uniform prior: ``m log2 K`` bits."""
        return self.n_codes * math.log2(self.codebook_size)

    def encode_continuous(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` -> the encoder's output ``z_e: [B, m, e]``."""
        return self.encoder(models.as_images(x)).reshape(-1, self.n_codes, self.code_dim)

    def encode(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` -> the quantised code ``z_q: [B, m, e]`` (no straight-through: no gradient)."""
        return quantize(self.encode_continuous(x), self.codebook)[0]

    def codes(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` -> code indices ``[B, m]`` (int64 in 0..K-1)."""
        return quantize(self.encode_continuous(x), self.codebook)[1]

    def decode_logits(self, z_q: Tensor) -> Tensor:
        """``z_q: [B, m, e]`` -> pixel logits ``[B, 1, 28, 28]``."""
        if z_q.ndim != 3 or tuple(z_q.shape[1:]) != (self.n_codes, self.code_dim):
            raise ValueError(f"z_q must be [B, m, e] = [B, {self.n_codes}, {self.code_dim}], got {tuple(z_q.shape)}")
        return self.decoder(z_q.reshape(z_q.shape[0], -1))

    def decode(self, z_q: Tensor) -> Tensor:
        """``z_q: [B, m, e]`` -> the decoder's mean image ``[B, 1, 28, 28]`` (pixel probabilities)."""
        return torch.sigmoid(self.decode_logits(z_q))

    def decode_codes(self, indices: Tensor) -> Tensor:
        """Code indices ``[B, m]`` -> mean images ``[B, 1, 28, 28]``."""
        indices = _check_indices("indices", indices, self.codebook_size)
        if indices.ndim != 2 or indices.shape[1] != self.n_codes:
            raise ValueError(f"indices must be [B, m] with m = {self.n_codes}, got {tuple(indices.shape)}")
        return self.decode(self.codebook[indices.to(self.codebook.device)])

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` -> reconstruction ``[B, 1, 28, 28]`` (deterministic)."""
        return self.decode(self.encode(x))

    def recon_nats(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """``−log p(target | z_q(x))`` in nats per image -> ``[B]`` (target: binary images, default x)."""
        x = models.as_images(x)
        target = x if target is None else models.as_images(target)
        return -losses.bernoulli_log_prob(self.decode_logits(self.encode(x)), target)

    @torch.no_grad()
    def _init_kmeans(self, x: Tensor, generator: torch.Generator | None) -> None:
        z_e = self.encode_continuous(x).reshape(-1, self.code_dim)
        if generator is None or generator.device != z_e.device:
            generator = torch.Generator(device=z_e.device).manual_seed(0)
        self.codebook.copy_(kmeans(z_e, self.codebook_size, generator=generator))
        self.initialised.fill_(True)

    @torch.no_grad()
    def _restart_dead(self, z_e: Tensor, generator: torch.Generator | None) -> None:
        dead = (self.usage < self.RESTART_BELOW).nonzero().squeeze(1)
        if not len(dead):
            return
        flat = z_e.detach().reshape(-1, self.code_dim)
        gdev = generator.device if generator is not None else flat.device
        pick = torch.randint(flat.shape[0], (len(dead),), generator=generator, device=gdev).to(flat.device)
        self.codebook[dead] = flat[pick]
        self.usage[dead] = 1.0  # time (about 230 batches) to attract encoder outputs before the next restart

    def loss(self, x: Tensor, *, target: Tensor | None = None, beta: float = 0.25,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``−log p(x | z_q) + ‖sg[z_e] − z_q‖² + β ‖z_e − sg[z_q]‖²``, batch means; the two code terms are
        summed over the m positions.

        Returns ``{"loss", "recon" (nats per image), "codebook", "commitment" (β included), "perplexity"
        (of the batch's codes; no gradient)}``. generator: for the k-means initialisation (``init="kmeans"``,
        done once, on the first batch seen in training mode).
        """
        x = models.as_images(x)
        target = x if target is None else models.as_images(target)
        if target.shape != x.shape:
            raise ValueError(f"target {tuple(target.shape)} must have the shape of x {tuple(x.shape)}")
        if self.training and not bool(self.initialised):
            self._init_kmeans(x, generator)
        z_e = self.encode_continuous(x)
        if self.training and self.restarts:
            self._restart_dead(z_e, generator)
        z_q, idx = quantize(z_e, self.codebook)
        if self.training and self.restarts:
            with torch.no_grad():
                counts = torch.bincount(idx.reshape(-1), minlength=self.codebook_size).to(self.usage.dtype)
                self.usage.mul_(self.USAGE_DECAY).add_(counts, alpha=1 - self.USAGE_DECAY)
        logits = self.decode_logits(straight_through(z_e, z_q))
        recon = -losses.bernoulli_log_prob(logits, target).mean()
        cb = codebook_loss(z_e, z_q).sum(1).mean()
        commit = commitment_loss(z_e, z_q, beta).sum(1).mean()
        ppl = torch.tensor(perplexity(idx, self.codebook_size), dtype=recon.dtype, device=recon.device)
        return {"loss": recon + cb + commit, "recon": recon, "codebook": cb, "commitment": commit,
                "perplexity": ppl}


@torch.no_grad()
def codes_of(model: VQVAE, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The code indices of ``x: [N, 1, 28, 28]`` -> ``[N, m]`` (int64, on ``x``'s device), batch by batch
    on the model's device, in eval mode."""
    x = checks.images("x", x)
    checks.integer("batch_size", batch_size)
    dev = model.codebook.device
    was = model.training
    model.eval()
    try:
        return torch.cat([model.codes(x[i:i + batch_size].to(dev)).to(x.device)
                          for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was)


@torch.no_grad()
def decode_codes_of(model: VQVAE, codes: Tensor, batch_size: int = 1024) -> Tensor:
    """Mean images of code indices ``[N, m]`` -> ``[N, 1, 28, 28]`` (on ``codes``' device), batch by batch."""
    _check_codes(codes, model.n_codes, model.codebook_size)
    dev = model.codebook.device
    return torch.cat([model.decode_codes(codes[i:i + batch_size].to(dev)).to(codes.device)
                      for i in range(0, codes.shape[0], batch_size)])


# ---------------------------------------------------------------------------------------------
# Priors over the codes
# ---------------------------------------------------------------------------------------------


def _check_codes(codes: Any, m: int, K: int) -> Tensor:
    codes = _check_indices("codes", codes, K)
    if codes.ndim != 2 or codes.shape[1] != m:
        raise ValueError(f"codes must be [B, m] with m = {m}, got {tuple(codes.shape)}")
    return codes


def all_codes(m: int, K: int) -> Tensor:
    """Every sequence of ``m`` symbols from ``0..K-1`` -> ``[K**m, m]`` (for checks by enumeration)."""
    m, K = checks.integer("m", m), _check_K(K)
    if K**m > 2_000_000:
        raise ValueError(f"K**m = {K**m} sequences are too many to enumerate")
    grids = torch.meshgrid(*[torch.arange(K)] * m, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], 1)


class CategoricalPrior(nn.Module):
    """``p(c) = Π_i p_i(c_i)``: an independent categorical over K symbols at each of the m positions.

    :meth:`fit` is the closed-form maximum-likelihood estimate with Laplace smoothing: ``p_i(k) = (n_ik + α)
    / (N + αK)``, where ``n_ik`` counts code k at position i (α = 0: the empirical frequencies).
    """

    def __init__(self, probs: Tensor):
        super().__init__()
        if not isinstance(probs, Tensor) or probs.ndim != 2 or probs.shape[1] < 2:
            raise ValueError(f"probs must be [m, K] with K >= 2, got {getattr(probs, 'shape', type(probs).__name__)}")
        if not torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-5) or bool((probs < 0).any()):
            raise ValueError("each row of probs must be a probability distribution (non-negative, summing to 1)")
        self.register_buffer("probs", probs.detach().clone())

    @property
    def m(self) -> int:
        return self.probs.shape[0]

    @property
    def K(self) -> int:
        return self.probs.shape[1]

    @classmethod
    def fit(cls, codes: Tensor, K: int, alpha: float = 1.0) -> CategoricalPrior:
        """Fit to ``codes: [N, m]``: ``p_i(k) = (n_ik + α) / (N + αK)``."""
        K = _check_K(K)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"alpha (the Laplace smoothing count) must be a number >= 0, got {alpha!r}")
        if not isinstance(codes, Tensor) or codes.ndim != 2 or codes.shape[0] == 0:
            raise ValueError(f"codes must be a non-empty [N, m] tensor, got {getattr(codes, 'shape', type(codes).__name__)}")
        codes = _check_codes(codes, codes.shape[1], K)
        counts = torch.stack([torch.bincount(codes[:, i], minlength=K) for i in range(codes.shape[1])]).double()
        return cls((counts + alpha) / (codes.shape[0] + alpha * K))

    def log_prob(self, codes: Tensor) -> Tensor:
        """``log p(c)`` in nats: ``codes: [B, m] -> [B]``."""
        codes = _check_codes(codes, self.m, self.K).to(self.probs.device)
        logp = torch.log(self.probs)  # [m, K]
        return logp[torch.arange(self.m, device=codes.device), codes].sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``[n, m]`` drawn position by position."""
        n = checks.integer("n", n)
        device = generator.device if generator is not None else self.probs.device
        out = torch.multinomial(self.probs.to(device).float(), n, replacement=True, generator=generator)  # [m, n]
        return out.T.contiguous()


class _MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class ARPrior(nn.Module):
    """``p(c) = Π_i p(c_i | c_<i)``: a masked MLP over the one-hot codes (MADE, Germain et al. 2015).

    Input ``[B, m·K]`` (one-hot per position), output logits ``[B, m, K]``. Masks give each hidden unit a
    degree ``1..m-1`` and let output i see only inputs of positions ``< i``, so one pass gives every
    conditional; position 0's logits are a learned vector (the marginal of ``c_0``).
    """

    def __init__(self, m: int, K: int, hidden: Sequence[int] = (256,)):
        super().__init__()
        self.m, self.K = checks.integer("m", m), _check_K(K)
        self.hidden = models._int_tuple("hidden", hidden)
        if m < 2:
            raise ValueError("an autoregressive prior needs m >= 2 positions")
        deg_in = torch.arange(m).repeat_interleave(K)  # position of each input unit: 0..m-1
        degs = [deg_in]
        layers: list[nn.Module] = []
        n_prev = m * K
        for i, h in enumerate(self.hidden):
            d = torch.arange(h) % (m - 1)  # hidden degrees 0..m-2: unit may see inputs of positions <= d
            layers += [_MaskedLinear(n_prev, h, (d[:, None] >= degs[-1][None, :])), nn.ReLU()]
            degs.append(d)
            n_prev = h
        deg_out = torch.arange(m).repeat_interleave(K)
        layers.append(_MaskedLinear(n_prev, m * K, (deg_out[:, None] > degs[-1][None, :])))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict[str, Any]:
        return {"m": self.m, "K": self.K, "hidden": list(self.hidden)}

    def logits(self, codes: Tensor) -> Tensor:
        """``codes: [B, m] -> [B, m, K]``: the logits of ``p(c_i | c_<i)`` at each position."""
        codes = _check_codes(codes, self.m, self.K)
        dev = self.net[0].weight.device
        x = nn.functional.one_hot(codes.to(dev), self.K).reshape(codes.shape[0], -1).to(self.net[0].weight.dtype)
        return self.net(x).reshape(-1, self.m, self.K)

    def log_prob(self, codes: Tensor) -> Tensor:
        """``log p(c)`` in nats: ``codes: [B, m] -> [B]``."""
        logp = torch.log_softmax(self.logits(codes), -1)
        return logp.gather(2, codes.to(logp.device)[..., None]).squeeze(2).sum(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes ``[n, m]``, drawn one position at a time (m passes)."""
        n = checks.integer("n", n)
        dev = self.net[0].weight.device
        gdev = generator.device if generator is not None else dev
        codes = torch.zeros(n, self.m, dtype=torch.long, device=dev)
        for i in range(self.m):
            probs = torch.softmax(self.logits(codes)[:, i].double(), -1).to(gdev)
            codes[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(dev)
        return codes


def fit_ar_prior(prior: ARPrior, codes: Tensor, *, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                 seed: int = 0) -> train.History:
    """Train ``prior`` in place by maximum likelihood (Adam on the mean ``−log p(c)``) on ``codes: [N, m]``;
    returns the per-epoch History (``"loss"``: nats per code)."""
    codes = _check_codes(codes, prior.m, prior.K)
    epochs, batch_size = checks.integer("epochs", epochs), checks.integer("batch_size", batch_size)
    dev = prior.net[0].weight.device
    codes = codes.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = train.make_optimizer(prior, lr)
    hist = train.History(train={"loss": []})
    prior.train()
    for _ in range(epochs):
        t0, total = time.perf_counter(), 0.0
        perm = torch.randperm(codes.shape[0], generator=gen, device=dev)
        for i in range(0, codes.shape[0], batch_size):
            cb = codes[perm[i:i + batch_size]]
            loss = -prior.log_prob(cb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * cb.shape[0]
        hist.train["loss"].append(total / codes.shape[0])
        hist.epoch_time.append(time.perf_counter() - t0)
    return hist


def ar_prior_cached(vqvae: VQVAE, codes: Tensor, *, hidden: Sequence[int] = (256,), epochs: int = 10,
                    batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                    device: str | torch.device = "cpu") -> tuple[ARPrior, train.History]:
    """An :class:`ARPrior` over ``vqvae``'s codes, trained on ``codes: [N, m]`` by :func:`fit_ar_prior`,
    once: the store keeps it under the checksums of the VQ-VAE's weights and of the codes, with the
    prior's settings and :data:`VERSION`."""
    m, K = vqvae.n_codes, vqvae.codebook_size
    codes = _check_codes(codes, m, K)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = ARPrior(m, K, hidden)
    config = store.canonical({
        "kind": "prior",
        "about": f"MADE prior over the {m} codes (K = {K}) of a VQ-VAE, from {codes.shape[0]} codes",
        "spec": {"arch": "made_prior", **prior.config()},
        "recipe": {"epochs": epochs, "batch_size": batch_size, "lr": float(lr)},
        "weights": store.checksum(vqvae.state_dict()),
        "inputs": store.checksum({"codes": codes.cpu()}),
        "seed": seed,
        "versions": {"vq": VERSION, "trainer": train.VERSION},
    })
    prior.to(dev)
    return train.load_or_train(config, prior, lambda: fit_ar_prior(prior, codes, epochs=epochs, batch_size=batch_size,
                                                                  lr=lr, seed=seed), device=dev)

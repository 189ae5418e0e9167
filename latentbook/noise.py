"""Corruptions of images, for denoising autoencoders and robustness checks, named by JSON-able specs.

Three corruptions of Vincent et al. (2008, 2010), each with one ``level`` in [0, 1] (a standard
deviation or a fraction of the pixels):

- ``gaussian``: add N(0, level²) noise to every pixel, then clip to [0, 1] (``clip=False`` keeps it);
- ``salt_and_pepper``: set a fraction ``level`` of each image's pixels, chosen at random, to 0 or 1
  with a fair coin (black or white);
- ``masking``: set a fraction ``level`` of each image's pixels, chosen at random, to 0.

The fractions are exact: ``round(level * D)`` of the ``D`` pixels of every image are chosen, as in
Vincent et al., not a Bernoulli number of them.

    x_noisy = noise.gaussian(x, 0.5, generator=g)                      # x: [N, 1, 28, 28] in [0, 1]
    x_noisy = noise.corrupt(x, {"kind": "masking", "level": 0.5}, generator=g)
    fit(model, x, transform=noise.transform({"kind": "salt_and_pepper", "level": 0.2}))

A spec ``{"kind": ..., "level": ...}`` is what ``train.train_cached(..., corruption=spec)`` stores
in a cached model's configuration, so a denoising autoencoder is cached like any other model.
Randomness comes from ``generator`` (a ``torch.Generator`` on the images' device): the same seed
gives the same corruption.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from latentbook import checks

__all__ = ["KINDS", "VERSION", "gaussian", "salt_and_pepper", "masking", "check_spec", "corrupt", "transform"]

VERSION = 1  # of the corruptions: bump when a change alters what a spec draws (store keys of denoising models)

KINDS = ("gaussian", "salt_and_pepper", "masking")
"""The corruption names a spec's ``"kind"`` may take."""


def _check_level(name: str, level: Any, upper: float | None = 1.0) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise ValueError(f"{name} must be a number, got {level!r}")
    level = float(level)
    if not level >= 0 or (upper is not None and level > upper):
        span = f"[0, {upper:g}]" if upper is not None else ">= 0"
        raise ValueError(f"{name} must lie in {span}, got {level}")
    return level


def _chosen_pixels(x: Tensor, fraction: float, generator: torch.Generator | None) -> Tensor:
    """Indices ``[N, k]`` of ``k = round(fraction * D)`` distinct pixels of each flattened image, at random."""
    n, d = x.shape[0], x[0].numel()
    k = round(fraction * d)
    u = torch.rand(n, d, generator=generator, device=x.device)
    # the k smallest of D independent uniforms sit at a uniformly random set of k positions
    return u.topk(k, dim=1, largest=False, sorted=False).indices


def gaussian(x: Tensor, sigma: float, *, generator: torch.Generator | None = None, clip: bool = True) -> Tensor:
    """``x + sigma * eps``, ``eps ~ N(0, I)``, clipped to [0, 1] unless ``clip=False``: shaped like ``x``."""
    x = checks.images("x", x)
    sigma = _check_level("sigma", sigma, upper=None)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noisy = x + sigma * eps
    return noisy.clamp(0.0, 1.0) if clip else noisy


def salt_and_pepper(x: Tensor, p: float, *, generator: torch.Generator | None = None) -> Tensor:
    """A fraction ``p`` of each image's pixels (chosen at random) set to 0 or 1 with a fair coin."""
    x = checks.images("x", x)
    p = _check_level("p", p)
    idx = _chosen_pixels(x, p, generator)
    salt = (torch.rand(idx.shape, generator=generator, device=x.device) < 0.5).to(x.dtype)
    return x.reshape(x.shape[0], -1).scatter(1, idx, salt).reshape(x.shape)


def masking(x: Tensor, p: float, *, generator: torch.Generator | None = None) -> Tensor:
    """A fraction ``p`` of each image's pixels (chosen at random) set to 0."""
    x = checks.images("x", x)
    p = _check_level("p", p)
    idx = _chosen_pixels(x, p, generator)
    return x.reshape(x.shape[0], -1).scatter(1, idx, 0.0).reshape(x.shape)


_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "gaussian": gaussian,
    "salt_and_pepper": salt_and_pepper,
    "masking": masking,
}


def check_spec(spec: Any) -> dict[str, Any]:
    """The canonical form ``{"kind": str, "level": float}`` of a corruption spec; raises on a bad one."""
    if not isinstance(spec, dict) or set(spec) != {"kind", "level"}:
        raise ValueError(f"a corruption spec is a dict {{'kind': one of {list(KINDS)}, 'level': number}}, got {spec!r}")
    kind = spec["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; choose one of {list(KINDS)}")
    level = _check_level(f"the level of {kind!r}", spec["level"], upper=None if kind == "gaussian" else 1.0)
    return {"kind": kind, "level": level}


def corrupt(x: Tensor, spec: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
    """``x`` corrupted as ``spec`` says, e.g. ``{"kind": "gaussian", "level": 0.5}``."""
    spec = check_spec(spec)
    return _FUNCTIONS[spec["kind"]](x, spec["level"], generator=generator)


def transform(spec: dict[str, Any]) -> Callable[[Tensor, torch.Generator], Tensor]:
    """``fn(x, generator) -> corrupted x``: the trainer's batch ``transform`` for this spec."""
    spec = check_spec(spec)

    def fn(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return _FUNCTIONS[spec["kind"]](x, spec["level"], generator=generator)

    fn.spec = spec  # type: ignore[attr-defined]
    return fn


"""The two argument checks every module shares: a batch of images, and an integer with a lower bound.

Each raises one clear error naming the argument, what it must be and what it got.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["images", "integer"]


def images(name: str, x: Any) -> Tensor:
    """``x`` if it is a non-empty float batch of images ``[N, 1, 28, 28]`` (or ``[N, D]``); raise otherwise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of images [N, 1, 28, 28] (or [N, D]), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of images [N, 1, 28, 28] (or [N, D]), "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold float images in [0, 1], got dtype {x.dtype} (divide uint8 pixels by 255)")
    return x


def integer(name: str, v: Any, minimum: int = 1) -> int:
    """``v`` if it is an integer (not a bool) ``>= minimum``; raise otherwise."""
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return v

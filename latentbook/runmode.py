"""Run modes, device choice and seeding: the knobs every chapter's `parameters` cell sets.

A chapter starts with ``MODE``, ``DEVICE``, ``DATASET`` and ``SEED``; it turns them into
concrete settings with :func:`get_mode`, :func:`resolve_device` and :func:`seed_everything`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RunMode:
    """How much work a chapter does.

    ``smoke`` is for CI on a 2-core CPU: the real computation on a subset, in seconds.
    ``full`` is the book as published: all the data and the epochs the prose describes.
    """

    name: str
    n_train: int | None  # training images to use; None = all 60,000
    n_test: int | None  # test images to use; None = all 10,000
    max_epochs: int | None  # cap on any training run; None = no cap

    def epochs(self, full: int) -> int:
        """Epochs to train for a model that the full book trains for ``full`` epochs."""
        if full < 1:
            raise ValueError(f"epochs must be >= 1, got {full}")
        return full if self.max_epochs is None else min(full, self.max_epochs)

    def scale(self, full: int, smoke: int) -> int:
        """A count (samples, k, grid size...) that is ``full`` in full mode and ``smoke`` otherwise."""
        return full if self.name == "full" else smoke


MODES: dict[str, RunMode] = {
    "smoke": RunMode("smoke", n_train=2048, n_test=1000, max_epochs=2),
    "full": RunMode("full", n_train=None, n_test=None, max_epochs=None),
}


def get_mode(name: str) -> RunMode:
    """The :class:`RunMode` called ``name`` (``"smoke"`` or ``"full"``)."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown MODE {name!r}; choose one of {sorted(MODES)}") from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)  # raises on nonsense such as "gpu0"
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"DEVICE={device!r} was asked for but no CUDA GPU is available here; "
            "use DEVICE='auto' or 'cpu'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"DEVICE={device!r} was asked for but MPS is not available here")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed`` too."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"SEED must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)

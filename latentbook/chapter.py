"""What every chapter does first, and how it hands numbers to its prose.

A chapter's ``parameters`` cell holds plain literals (papermill overrides them); the next cell calls
:func:`start`, which validates them, seeds everything, picks the device and prints one line saying
what this run is, so every executed page states the parameters it ran with.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass

import torch

from latentbook import __version__, store
from latentbook.runmode import RunMode, get_mode, resolve_device, seed_everything

DATASETS = ("mnist", "fashion-mnist")


@dataclass(frozen=True)
class Run:
    """The settings of one execution of a chapter."""

    mode: RunMode
    device: torch.device
    dataset: str
    seed: int

    def describe(self) -> str:
        gpu = f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        return (
            f"MODE={self.mode.name!r}  DEVICE={self.device.type!r}{gpu}  DATASET={self.dataset!r}  SEED={self.seed}\n"
            f"          latentbook {__version__}, torch {torch.__version__}, Python {platform.python_version()}"
        )


def start(MODE: str = "full", DEVICE: str = "auto", DATASET: str = "mnist", SEED: int = 0, *, quiet: bool = False) -> Run:
    """Validate a chapter's parameters, seed everything, choose the device; print what this run is."""
    dataset = DATASET.lower().replace("_", "-")
    if dataset not in DATASETS:
        raise ValueError(f"unknown DATASET {DATASET!r}; choose one of {list(DATASETS)}")
    run = Run(get_mode(MODE), resolve_device(DEVICE), dataset, SEED)
    seed_everything(SEED)
    _record_dependencies(os.environ.get("LATENTBOOK_DEPENDENCIES", ""))
    if not quiet:
        print("This run:", run.describe())
    return run


def dependencies() -> dict:
    """What this process has used so far: the ``latentbook`` modules it imported and the store
    entries it read or wrote (``{key: checksum}``)."""
    # list() copies the keys in one step: another thread may be importing while a cell ends.
    modules = sorted(m for m in list(sys.modules) if m == "latentbook" or m.startswith("latentbook."))
    return {"modules": modules, "entries": store.used()}


def _record_dependencies(path: str) -> None:
    """When the build asks (``$LATENTBOOK_DEPENDENCIES``), rewrite ``path`` with :func:`dependencies`
    after every cell, so the record is complete when the last cell ends (the build keys the chapter on it)."""
    if not path:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def write(*_args) -> None:
        store.write_text(path, json.dumps(dependencies(), indent=1))

    write()
    for old in [cb for cb in shell.events.callbacks["post_run_cell"] if getattr(cb, "__name__", "") == write.__name__
                and getattr(cb, "__module__", "") == __name__]:
        shell.events.unregister("post_run_cell", old)  # start() run twice in one kernel: one writer
    shell.events.register("post_run_cell", write)


def glue(name: str, value, display: bool = False) -> None:
    """Hand ``value`` to the prose as ``{glue:text}`name```; a plain display where myst-nb is absent (Colab)."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # on Colab: the Colab edition's text carries the published value; this run's is printed if asked
        if display:
            from IPython.display import display as _display

            _display(value)
        return
    _glue(name, value, display=display)


class ClaimError(AssertionError):
    """A relation the prose states did not hold in a run where it must."""


def claim(run: Run, holds: bool, statement: str, *, in_smoke: bool = False) -> bool:
    """Check a relation the prose states, e.g. ``claim(run, ae_mse < pca_mse, "the AE beats PCA")``.

    In full mode (the published book) a false claim stops the chapter: the prose cannot say what
    the numbers do not show. In smoke mode (a subset, two epochs) it must hold only where
    ``in_smoke=True``; otherwise a failure is reported and the chapter goes on.
    """
    holds = bool(holds)
    if holds:
        print(f"checked: {statement}")
    elif run.mode.name == "full" or in_smoke:
        raise ClaimError(f"the prose says {statement!r}, but in this run ({run.mode.name} mode) it does not hold")
    else:
        print(f"not in this {run.mode.name} run (it needs full mode): {statement}")
    return holds

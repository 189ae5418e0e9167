"""latentbook: tested helpers for an executable book on learning latent representations.

Submodules load on first use (``latentbook.data``, ``latentbook.pca`` ...), so ``import latentbook``
stays fast and a chapter pays only for what it uses.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "build", "chapter", "classifier", "data", "diagrams", "evaluate", "exercises", "explorer", "information",
    "losses", "models", "montecarlo", "noise", "pca", "plots", "ppca", "runmode", "train", "vq", "diffusion", "zoo",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"latentbook.{name}")
    raise AttributeError(f"module 'latentbook' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)

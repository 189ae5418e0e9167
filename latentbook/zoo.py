"""The models this book trains, by name.

One place fixes each model's configuration and its full-mode training budget, so that

- chapters that mean the same model ask for it by the same name and share one cache entry;
- the whole book stays inside its time budget (DESIGN.md: 25 minutes cold on a 2-core CPU);
- instructors can train everything before class: ``python -m latentbook cache warm``.

    model, history = zoo.get("vae-2", run)     # run = latentbook.chapter.start(...)

``run.mode`` scales each recipe: smoke mode trains on a subset for at most two epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from latentbook import train


@dataclass(frozen=True)
class Recipe:
    """How to train one model: its spec for ``models.build`` and the options of ``train.fit``."""

    spec: dict[str, Any]
    epochs: int  # in full mode; smoke mode caps it
    batch_size: int = 128
    lr: float = 1e-3
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    binarize: str | None = None
    kl_warmup_epochs: int = 0
    about: str = ""  # one line for `cache warm` and the instructor
    corruption: dict[str, Any] | None = None  # denoising: a latentbook.noise spec (chapter "regularised")
    exclude_classes: tuple[int, ...] | None = None  # classes left out of training (chapter "applications")


RECIPES: dict[str, Recipe] = {
    # --- autoencoders (chapters: autoencoders, applications, side by side)
    "ae-2": Recipe({"arch": "mlp_ae", "latent_dim": 2}, epochs=20, batch_size=256,
                   about="MLP autoencoder 784-512-256-128-2"),
    "ae-32": Recipe({"arch": "mlp_ae", "latent_dim": 32}, epochs=20, batch_size=256,
                    about="MLP autoencoder 784-512-256-128-32"),
    # --- chapter "autoencoders": the bottleneck sweep (d = 2, 8, 32 with ae-2 and ae-32 above),
    # the linear autoencoder that recovers PCA's subspace, the convolutional autoencoders
    "ae-8": Recipe({"arch": "mlp_ae", "latent_dim": 8}, epochs=20, batch_size=256,
                   about="MLP autoencoder 784-512-256-128-8 (bottleneck sweep)"),
    "linear-ae-6": Recipe({"arch": "linear_ae", "latent_dim": 6}, epochs=20, batch_size=256, lr=1e-2,
                          about="linear autoencoder, 6-D code, MSE: spans PCA's top-6 subspace"),
    **{f"conv-ae-{d}": Recipe({"arch": "conv_ae", "latent_dim": d, "channels": [16, 32]}, epochs=3,
                              about=f"convolutional autoencoder, conv 1-16-32 (stride 2), {d}-D code")
       for d in (2, 8, 32)},
    # --- variational autoencoders (chapters: latent-variable models, VAE, side by side)
    "vae-2": Recipe({"arch": "vae", "latent_dim": 2}, epochs=30, binarize="dynamic",
                    about="MLP VAE, 2-D latent, Bernoulli decoder, dynamically binarised MNIST"),
    "vae-32": Recipe({"arch": "vae", "latent_dim": 32}, epochs=30, binarize="dynamic",
                     about="MLP VAE, 32-D latent, Bernoulli decoder, dynamically binarised MNIST"),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"no model called {name!r}; the book's models are {sorted(RECIPES)}") from None


def get(name: str, run, *, progress: bool = True, retrain: bool = False) -> tuple[nn.Module, train.History]:
    """The model ``name`` for this run (trained once, then loaded from the cache), and its history."""
    r = recipe(name)
    return train.train_cached(
        r.spec,
        dataset=run.dataset,
        n_train=run.mode.n_train,
        epochs=run.mode.epochs(r.epochs),
        batch_size=r.batch_size,
        lr=r.lr,
        seed=run.seed,
        device=run.device,
        loss_kwargs=r.loss_kwargs or None,
        binarize=r.binarize,
        kl_warmup_epochs=r.kl_warmup_epochs,
        progress=progress,
        retrain=retrain,
        corruption=r.corruption,
        exclude_classes=list(r.exclude_classes) if r.exclude_classes is not None else None,
    )


def warm(run, names: list[str] | None = None, log=print) -> None:
    """Train (or find in the cache) every model of the book for this run's settings."""
    for name in names or list(RECIPES):
        log(f"{name}: {recipe(name).about}")
        get(name, run)

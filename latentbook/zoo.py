"""The models this book trains, by name.

One place fixes each model's configuration and its full-mode training budget, so that

- chapters that mean the same model ask for it by the same name and share one cache entry;
- the whole book's training cost is visible in one place;
- instructors can fetch (or train) everything before class: ``python -m latentbook warm``.

    model, history = zoo.get("vae-2", run)     # run = latentbook.chapter.start(...)

``run.mode`` scales each recipe: smoke mode trains on a subset for at most two epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from latentbook import data, diffusion, evaluate, store, train, vq  # vq, diffusion: register their archs


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
    # --- chapter "autoencoders": the bottleneck sweep (MLP d = 2, 8, 32 with ae-2 and ae-32 above;
    # conv d = 8, 32), the linear autoencoder that recovers PCA's subspace. Full-mode cost on a 2-core
    # CPU: ae-8 ~75 s, linear-ae-6 ~12 s, each conv-ae ~35 s (3 epochs of ~11 s).
    "ae-8": Recipe({"arch": "mlp_ae", "latent_dim": 8}, epochs=20, batch_size=256,
                   about="MLP autoencoder 784-512-256-128-8 (bottleneck sweep)"),
    "linear-ae-6": Recipe({"arch": "linear_ae", "latent_dim": 6}, epochs=10, batch_size=128, lr=3e-3,
                          about="linear autoencoder, 6-D code, MSE: spans PCA's top-6 subspace"),
    **{f"conv-ae-{d}": Recipe({"arch": "conv_ae", "latent_dim": d, "channels": [16, 32]}, epochs=3,
                              about=f"convolutional autoencoder, conv 1-16-32 (stride 2), {d}-D code")
       for d in (8, 32)},
    # --- chapter "regularised" (also used by "applications"). Timed on 10,000 images against ae-32
    # (about 4 s per full epoch): a denoising MLP costs ~1.1x ae-32 per epoch (the corruption), so
    # 10 epochs ~ 45 s each; the one-layer sigmoid autoencoders ~0.2-0.26x, so 20 epochs ~ 20 s each.
    # Together ~3.5 minutes of training.
    "dae-gaussian-32": Recipe({"arch": "mlp_ae", "latent_dim": 32}, epochs=10, batch_size=256,
                              corruption={"kind": "gaussian", "level": 0.5},
                              about="denoising MLP autoencoder (as ae-32), Gaussian noise sigma = 0.5"),
    "dae-saltpepper-32": Recipe({"arch": "mlp_ae", "latent_dim": 32}, epochs=10, batch_size=256,
                                corruption={"kind": "salt_and_pepper", "level": 0.2},
                                about="denoising MLP autoencoder (as ae-32), 20% salt-and-pepper noise"),
    "dae-masking-32": Recipe({"arch": "mlp_ae", "latent_dim": 32}, epochs=10, batch_size=256,
                             corruption={"kind": "masking", "level": 0.5},
                             about="denoising MLP autoencoder (as ae-32), 50% of the pixels masked"),
    **{name: Recipe({"arch": "mlp_ae", "latent_dim": 128, "hidden": [], "code_activation": "sigmoid"},
                    epochs=20, batch_size=256, lr=3e-3, loss_kwargs=kw, about=about)
       for name, kw, about in [
           ("ae-sig-128", {}, "one-layer autoencoder 784-128-784, sigmoid code, no penalty"),
           ("sparse-l1-128", {"penalties": {"l1": 1.0}}, "as ae-sig-128 + L1 penalty on the code (weight 1)"),
           ("sparse-kl-128", {"penalties": {"kl_sparsity": {"weight": 1.0, "rho": 0.05}}},
            "as ae-sig-128 + KL sparsity penalty, target activation 0.05 (weight 1)"),
           ("cae-128", {"penalties": {"contractive": 1.0}},
            "as ae-sig-128 + exact contractive penalty ||dz/dx||_F^2 (weight 1)"),
       ]},
    # --- chapter "applications": ae-32 trained without one class, for anomaly detection
    # (54,000 images: ~0.9x an ae-32 epoch, 20 epochs ~ 70 s)
    "ae-32-no8": Recipe({"arch": "mlp_ae", "latent_dim": 32}, epochs=20, batch_size=256, exclude_classes=(8,),
                        about="MLP autoencoder as ae-32, trained without class 8 (anomaly detection)"),
    # --- variational autoencoders (chapters: latent-variable models, VAE, side by side)
    # 15 epochs: one epoch (60,000 images, batch 128) measured 10.8 s of CPU time on one thread
    # (chapter "latent-variable models"), so each model stays near its ~2-minute budget.
    "vae-2": Recipe({"arch": "vae", "latent_dim": 2}, epochs=15, binarize="dynamic",
                    about="MLP VAE, 2-D latent, Bernoulli decoder, dynamically binarised MNIST"),
    "vae-32": Recipe({"arch": "vae", "latent_dim": 32}, epochs=15, binarize="dynamic",
                     about="MLP VAE, 32-D latent, Bernoulli decoder, dynamically binarised MNIST"),
    # --- chapter "vae": a convolutional VAE; then one shorter budget shared by every model the
    # chapter compares (β sweep, Gaussian decoder, KL annealing, free bits); the judge of samples
    "conv-vae-32": Recipe({"arch": "vae", "encoder": "conv", "latent_dim": 32, "channels": [16, 32]},
                          epochs=5, binarize="dynamic",
                          about="convolutional VAE, conv 1-16-32 (stride 2), 32-D latent, Bernoulli decoder"),
    **{f"vae-32-beta{b:g}": Recipe({"arch": "vae", "latent_dim": 32}, epochs=10, binarize="dynamic",
                                   loss_kwargs={"beta": float(b)},
                                   about=f"β-VAE, β = {b:g}, MLP, 32-D latent (β sweep, short budget)")
       for b in (0.5, 1, 2, 4, 8)},
    "vae-32-gaussian": Recipe({"arch": "vae", "latent_dim": 32, "likelihood": "gaussian"}, epochs=10,
                              about="MLP VAE, 32-D latent, Gaussian decoder with a learned variance, grey levels"),
    "vae-32-anneal": Recipe({"arch": "vae", "latent_dim": 32}, epochs=10, binarize="dynamic", kl_warmup_epochs=5,
                            about="MLP VAE, 32-D latent, KL weight ramped from 0 to 1 over 5 epochs"),
    "vae-32-freebits": Recipe({"arch": "vae", "latent_dim": 32}, epochs=10, binarize="dynamic",
                              loss_kwargs={"free_bits": 0.5},
                              about="MLP VAE, 32-D latent, free bits: KL floor of 0.5 nats per dimension"),
    "digit-classifier": Recipe({"arch": "digit_classifier"}, epochs=3, loss_kwargs={"blend": 0.5, "noise": 0.1},
                               about="small CNN classifier, taught to doubt blends and noise: judges samples"),
    # --- chapter "conditional-vae": the conditional VAEs, trained on the labels with the recipes of
    # vae-2 and vae-32 (same epochs, batch, binarisation), so their ELBOs and codes compare one to one.
    # One epoch (60,000 images, batch 128) measured 4.6 s on this 2-core CPU, idle: ~70 s each.
    **{f"cvae-{d}": Recipe({"arch": "cvae", "latent_dim": d}, epochs=15, binarize="dynamic",
                           about=f"conditional MLP VAE, one-hot label into encoder and decoder, {d}-D latent")
       for d in (2, 32)},
    # --- chapter "vq-vae": VQ-VAEs with the VAE's MLP (784-512-256-128), 4 codes from a codebook of 64
    # vectors of dimension 8 (24 bits, 16.6 nats: inside the rate range of the β sweep), Bernoulli decoder.
    # The same recipe twice: a random codebook (many codes die) and the same with dead-code restarts (the
    # remedy). One epoch is about an MLP VAE's (~5 s idle; 8 epochs ~ 45 s each; measured 36 s per 15,000
    # images under a load of 7 from other jobs).
    **{name: Recipe({"arch": "vq_vae", "n_codes": 4, "codebook_size": 64, "code_dim": 8, **extra},
                    epochs=8, binarize="dynamic", loss_kwargs={"beta": 0.25},
                    about=f"VQ-VAE, MLP, 4 codes from a codebook of 64 (24 bits), random codebook{about}")
       for name, extra, about in (("vq-vae", {}, ""),
                                  ("vq-vae-restarts", {"restarts": True}, ", dead-code restarts"))},
    # --- chapter "diffusion": a DDPM (T = 1000, linear β from 1e-4 to 0.02) on dynamically binarised MNIST
    # in {-1, +1}, MLP 784-512-512-512 with a sinusoidal time embedding, Ho et al.'s simple ε loss. One
    # epoch (batch 128) measured 28 s on this 2-core CPU shared with other jobs (load ~2.4): 7 epochs ~3.3 min.
    "ddpm": Recipe({"arch": "ddpm", "hidden": [512, 512, 512]}, epochs=7, binarize="dynamic",
                   about="DDPM, MLP 3x512 with time embedding, binary parameterisation, binarised MNIST"),
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"no model called {name!r}; the book's models are {sorted(RECIPES)}") from None


def get(name: str, run, *, progress: bool = True, retrain: bool = False) -> tuple[nn.Module, train.History]:
    """The model ``name`` for this run (trained once, then loaded from the cache), and its history."""
    r = recipe(name)
    if r.spec.get("arch") == "digit_classifier":  # chapter "vae": trained on labels by latentbook.classifier
        from latentbook import classifier

        return classifier.train_cached(r.spec, dataset=run.dataset, n_train=run.mode.n_train,
                                       epochs=run.mode.epochs(r.epochs), batch_size=r.batch_size, lr=r.lr,
                                       seed=run.seed, device=run.device, retrain=retrain, **r.loss_kwargs)
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


# The stored evaluations of the book: the importance-weighted bounds of the VAE chapter (also read by
# "side by side"), for these models, on the images and k of likelihood_setup.
LIKELIHOOD_MODELS = ("vae-32", "conv-vae-32", "vae-2")


def binarised_test_set(run) -> Tensor:
    """The test images binarised once with ``run.seed`` (on ``run.device``): ``[N, 1, 28, 28]`` of 0s and 1s,
    the images every Bernoulli VAE is scored on."""
    x_test, _ = data.load(run.dataset, "test", n=run.mode.n_test, device=run.device)
    return torch.bernoulli(x_test, generator=torch.Generator(device=run.device).manual_seed(run.seed))


def likelihood_setup(run) -> tuple[Tensor, list[int]]:
    """``(x_ll, ks)``: the binarised test images whose log-likelihood the book estimates (all of them on a
    GPU, the first 500 on a CPU; 50 in smoke mode) and the numbers of importance samples (up to 5,000)."""
    x_bin = binarised_test_set(run)
    n = len(x_bin) if run.device.type == "cuda" else min(run.mode.scale(500, 50), len(x_bin))
    ks = [k for k in (1, 5, 50, 500, 5000) if k <= run.mode.scale(5000, 50)]
    return x_bin[:n], ks


def likelihood_bounds(name: str, run) -> dict[int, Tensor]:
    """The importance-weighted bounds ``{k: [N] nats}`` of model ``name`` on :func:`likelihood_setup`'s
    images, from the store (computed once: minutes on a CPU at k = 5,000)."""
    model, _ = get(name, run)
    x_ll, ks = likelihood_setup(run)
    return evaluate.iwae_bounds(model, x_ll, ks, seed=run.seed, cache=True)


def vq_prior(run) -> tuple[nn.Module, nn.Module, train.History]:
    """``(vq_vae, prior, history)``: the VQ-VAE with restarts and the autoregressive prior over its codes that the
    chapter "vq-vae" fits on the codes of the training images, binarised once with ``run.seed`` (stored)."""
    model, _ = get("vq-vae-restarts", run)
    x_train, _ = data.load(run.dataset, "train", n=run.mode.n_train, device=run.device)
    gen = torch.Generator(device=run.device).manual_seed(run.seed)
    codes = vq.codes_of(model, torch.bernoulli(x_train, generator=gen))
    prior, history = vq.ar_prior_cached(model, codes, hidden=(256,), epochs=run.mode.epochs(20), seed=run.seed,
                                         device=run.device)
    return model, prior, history


def ddpm_setup(run) -> dict[str, Any]:
    """What the chapter "diffusion" evaluates the DDPM on: ``steps`` of the respaced sampler, ``n_gen``
    samples, the first ``n_elbo`` images of :func:`likelihood_setup` for the bound, computed with all T
    terms (``n_t`` None) or one term in each of ``n_t`` strata (smoke mode)."""
    full = run.mode.name == "full"
    return {"steps": run.mode.scale(100, 20), "n_gen": run.mode.scale(500, 100),
            "n_elbo": run.mode.scale(100, 10), "n_t": None if full else 20}


def ddpm_samples(run) -> Tensor:
    """The DDPM's samples of :func:`ddpm_setup` ``[n_gen, 1, 28, 28]`` (pixel probabilities; stored)."""
    model, _ = get("ddpm", run)
    setup = ddpm_setup(run)
    return diffusion.cached_samples(model, setup["n_gen"], steps=setup["steps"], seed=run.seed)


def ddpm_bound(run) -> dict[str, Tensor]:
    """The DDPM's −ELBO terms ``{"prior", "diffusion", "decoder", "total"}`` (each ``[n_elbo]`` nats) on the
    first images of :func:`likelihood_setup` (stored)."""
    model, _ = get("ddpm", run)
    setup = ddpm_setup(run)
    x_ll, _ = likelihood_setup(run)
    return diffusion.negative_elbo(model, x_ll[:setup["n_elbo"]], seed=run.seed, n_t=setup["n_t"], cache=True)


def warm(run, names: list[str] | None = None, log=print) -> None:
    """Make every model and stored evaluation of the book ready for this run's settings: first fetch
    every entry the published book lists (see :mod:`latentbook.store`), then take each model and each
    likelihood estimate from the store, training or computing only what is neither stored nor published."""
    url = store.models_url()
    listed = store.manifest(url) if url else "no published address is configured"
    if isinstance(listed, str):
        log(f"published weights: none fetched ({listed})")
    else:
        fetched = store.fetch_all(url, log=log)
        log(f"published weights: {fetched} of {len(listed['entries'])} entries ready from {url}")
    for name in names or list(RECIPES):
        log(f"{name}: {recipe(name).about}")
        get(name, run)
    for name in LIKELIHOOD_MODELS if names is None else [n for n in names if n in LIKELIHOOD_MODELS]:
        log(f"{name}: importance-weighted bounds on the test set (stored evaluation)")
        likelihood_bounds(name, run)
    if names is None:
        log("vq-vae-restarts: the autoregressive prior over its codes (stored)")
        vq_prior(run)
        log("ddpm: its samples and its bound on the test set (stored evaluations)")
        ddpm_samples(run)
        ddpm_bound(run)

"""The models this book trains, by name.

One place fixes each model's configuration and its full-mode training budget, so that

- chapters that mean the same model ask for it by the same name and share one cache entry;
- the whole book's training cost is visible in one place;
- instructors can fetch (or train) everything before class: ``python -m latentbook warm``.

    model, history = zoo.get("vae-2", run)     # run = latentbook.chapter.start(...)

``run.mode`` scales each recipe: smoke mode trains on a subset for at most two epochs.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from latentbook import checks, data, diffusion, evaluate, models, store, train, vq  # vq, diffusion: register their archs


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
    lr_schedule: str = "constant"  # or "onecycle": see train.make_lr_schedule and benchmarks/bench_time_to_quality.py


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
    # --- chapter "vae": one shorter budget shared by every model the chapter compares (β sweep, KL annealing, free
    # bits): 6 epochs with a one-cycle learning rate peaking at 3e-3 reach the test ELBO that 10 epochs at a
    # constant 1e-3 did (113.1 nats for β = 1) in 60% of the time (benchmarks/bench_time_to_quality.py). vae-32
    # and vae-2 keep 15 constant epochs: 8 one-cycle epochs gave vae-32 a better ELBO but a 2-point worse linear
    # probe, and vae-2's curve is flat (0.7 nats lost).
    **{name: Recipe({"arch": "vae", "latent_dim": 32}, epochs=6, lr=3e-3, lr_schedule="onecycle", binarize="dynamic",
                    loss_kwargs=kw, kl_warmup_epochs=warmup, about=about)
       for name, kw, warmup, about in [
           *[(f"vae-32-beta{b:g}", {"beta": float(b)}, 0, f"β-VAE, β = {b:g}, MLP, 32-D latent (β sweep, short budget)")
             for b in (0.5, 1, 2, 4, 8)],
           ("vae-32-anneal", {}, 3, "MLP VAE, 32-D latent, KL weight ramped from 0 to 1 over the first 3 of 6 epochs"),
           ("vae-32-freebits", {"free_bits": 0.5}, 0,
            "MLP VAE, 32-D latent, free bits: KL floor of 0.5 nats per dimension"),
       ]},
    # The Gaussian decoder's learned variance keeps shrinking, and its reconstructions improving, step by step:
    # its MSE after 8 one-cycle epochs was 16-21% worse than after its 10 at a constant 1e-3 (time_to_quality.json).
    "vae-32-gaussian": Recipe({"arch": "vae", "latent_dim": 32, "likelihood": "gaussian"}, epochs=10,
                              about="MLP VAE, 32-D latent, Gaussian decoder with a learned variance, grey levels"),
    # --- chapter "vae": a convolutional VAE; the judge of samples
    "conv-vae-32": Recipe({"arch": "vae", "encoder": "conv", "latent_dim": 32, "channels": [16, 32]},
                          epochs=5, binarize="dynamic",
                          about="convolutional VAE, conv 1-16-32 (stride 2), 32-D latent, Bernoulli decoder"),
    "digit-classifier": Recipe({"arch": "digit_classifier"}, epochs=3, loss_kwargs={"blend": 0.5, "noise": 0.1},
                               about="small CNN classifier, taught to doubt blends and noise: judges samples"),
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

# --- chapter "conditional-vae": the conditional VAEs, trained on the labels with the recipes of vae-2 and vae-32
# (the same epochs, batch, learning rate and binarisation), so their ELBOs and codes compare one to one.
RECIPES.update({f"cvae-{d}": replace(RECIPES[f"vae-{d}"], spec={"arch": "cvae", "latent_dim": d},
                                     about=f"conditional MLP VAE, one-hot label into encoder and decoder, {d}-D latent")
                for d in (2, 32)})

# The chapters that use each model, in book order: the first trains it in a cold build. A parallel build trains the
# models of the chapters it is about to execute (build --jobs); tests/test_full_book.py checks this table against
# the store entries each executed chapter recorded.
CHAPTERS: dict[str, tuple[str, ...]] = {
    "ae-2": ("autoencoders", "side-by-side"),
    "ae-32": ("autoencoders", "regularised", "applications", "side-by-side"),
    **dict.fromkeys(("ae-8", "linear-ae-6", "conv-ae-8", "conv-ae-32"), ("autoencoders",)),
    **dict.fromkeys(("dae-saltpepper-32", "dae-masking-32", "ae-sig-128", "sparse-l1-128", "sparse-kl-128", "cae-128"),
                    ("regularised",)),
    "dae-gaussian-32": ("regularised", "applications"),
    "ae-32-no8": ("applications",),
    "vae-2": ("latent-variable-models", "vae", "conditional-vae", "diffusion", "side-by-side"),
    "vae-32": ("latent-variable-models", "reparameterisation", "vae", "conditional-vae", "vq-vae", "diffusion",
               "side-by-side"),
    **dict.fromkeys(("vae-32-beta0.5", "vae-32-beta2", "vae-32-beta8"), ("vae", "vq-vae")),
    **dict.fromkeys(("vae-32-beta1", "vae-32-beta4"), ("vae", "conditional-vae", "vq-vae")),
    **dict.fromkeys(("vae-32-gaussian", "vae-32-anneal", "vae-32-freebits", "conv-vae-32"), ("vae",)),
    "digit-classifier": ("vae", "conditional-vae", "vq-vae", "diffusion", "side-by-side"),
    "cvae-2": ("conditional-vae",),
    "cvae-32": ("conditional-vae", "side-by-side"),
    "vq-vae": ("vq-vae",),
    "vq-vae-restarts": ("vq-vae", "side-by-side"),
    "ddpm": ("diffusion", "side-by-side"),
}


def models_for(chapters: list[str]) -> list[str]:
    """The models (names in :data:`RECIPES`) that any of ``chapters`` (file stems) uses."""
    return [name for name in RECIPES if set(CHAPTERS[name]) & set(chapters)]


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"no model called {name!r}; the book's models are {sorted(RECIPES)}") from None


def _options(name: str, run):
    """``(module, keyword arguments)``: the module whose ``train_cached`` and ``model_config`` make model ``name``
    (:mod:`latentbook.train`, or :mod:`latentbook.classifier` for the judge) and their common arguments for ``run``."""
    r = recipe(name)
    common = {"dataset": run.dataset, "n_train": run.mode.n_train, "epochs": run.mode.epochs(r.epochs),
              "batch_size": r.batch_size, "lr": r.lr, "seed": run.seed}
    if r.spec.get("arch") == "digit_classifier":  # chapter "vae": trained on labels by latentbook.classifier
        from latentbook import classifier

        return classifier, {**common, **r.loss_kwargs}
    return train, {**common, "loss_kwargs": r.loss_kwargs or None, "binarize": r.binarize,
                   "kl_warmup_epochs": r.kl_warmup_epochs, "corruption": r.corruption,
                   "exclude_classes": list(r.exclude_classes) if r.exclude_classes is not None else None,
                   "lr_schedule": r.lr_schedule}


def get(name: str, run, *, progress: bool = True, retrain: bool = False) -> tuple[nn.Module, train.History]:
    """The model ``name`` for this run (trained once, then loaded from the cache), and its history."""
    module, kw = _options(name, run)
    extra = {"progress": progress} if module is train else {}
    return module.train_cached(recipe(name).spec, device=run.device, retrain=retrain, **kw, **extra)


def config(name: str, run) -> dict[str, Any]:
    """What model ``name`` is for ``run``, as the store's key sees it (``store.key_of(config(...))``)."""
    module, kw = _options(name, run)
    return module.model_config(recipe(name).spec, **kw)


def describe(name: str, run) -> str:
    """How model ``name`` is trained in this run, in words: "8 epochs of 60,000 images, batch 128, Adam with a
    one-cycle learning rate peaking at 0.003" (for the prose, so that it follows the recipe)."""
    r = recipe(name)
    rate = {"constant": f"Adam at a constant learning rate of {r.lr:g}",
            "cosine": f"Adam with a learning rate decaying from {r.lr:g} along a cosine",
            "onecycle": f"Adam with a one-cycle learning rate peaking at {r.lr:g}"}[r.lr_schedule]
    epochs = run.mode.epochs(r.epochs)
    return (f"{epochs} epoch{'s' * (epochs != 1)} of {run.mode.n_train or 60_000:,} images, "
            f"batch {r.batch_size}, {rate}")


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
    if run.device.type == "cuda":
        return evaluate.iwae_bounds(model, x_ll, ks, seed=run.seed, cache=True)
    # On a CPU about 500 samples per decoder pass: on one thread (a parallel build's workers) within a few percent of
    # 50 images x 128 samples for the MLP VAEs, 8% faster for the conv VAE; on two threads a tie
    # (benchmarks/bench_importance_sampling.py).
    chunk = min(max(ks), 500)
    return evaluate.iwae_bounds(model, x_ll, ks, batch_size=max(1, 500 // chunk), chunk_size=chunk, seed=run.seed,
                                cache=True)


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


def default_jobs(device: torch.device) -> int:
    """How many models :func:`warm` trains at once by default: on a CPU, one per two cores (one per core on a
    machine of two), each process with the remaining cores as threads; on a GPU, one (not measured yet).

    Why: these small networks use a second thread poorly (an epoch of vae-32 on 20,000 images: 1.8 s on one
    thread, 1.3 s on two), so two single-threaded trainings on two cores finish sooner than one after the other
    (1.14x for four models, process start-up included: ``benchmarks/bench_parallel_warm.py``); on 16 cores eight
    2-threaded jobs keep every core busy."""
    if device.type != "cpu":
        return 1
    cores = os.cpu_count() or 1
    return cores if cores <= 2 else cores // 2


# A convolution's FLOPs take about 7x as long on a CPU as a matrix product's (an epoch of conv-ae-32, 0.07 TFLOP,
# ~11 s; of ae-32, 0.14 TFLOP, ~3.2 s): how _training_flops weighs them.
_CONV_COST = 7.0


def _training_flops(name: str, run) -> float:
    """Forward FLOPs of model ``name``'s loss per image (counted by torch; convolutions weighted by their cost on a
    CPU) x images x epochs: the order in which :func:`warm` hands out parallel jobs, longest first, so that no
    long job starts last."""
    from torch.utils.flop_counter import FlopCounterMode

    module, kw = _options(name, run)
    r, x = recipe(name), torch.rand(4, 1, 28, 28)
    with torch.random.fork_rng(devices=[]):
        model = module.build(r.spec) if module is not train else models.build(r.spec)
    with FlopCounterMode(display=False) as counter:
        if module is not train:
            model(x)
        else:
            model.loss(x, **({"y": torch.zeros(4, dtype=torch.long)} if train.takes_labels(model) else {}),
                       **r.loss_kwargs)
    flops = sum(n * (_CONV_COST if "convolution" in str(op) else 1.0)
                for op, n in counter.get_flop_counts()["Global"].items())
    return flops / len(x) * kw["epochs"] * (kw["n_train"] or 60_000)


def _evaluations(names: list[str] | None,
                 chapters: list[str] | None) -> list[tuple[str, str, Callable[[Any], Any]]]:
    """The stored evaluations :func:`warm` makes, as ``(label, model name, f(run))``: those of the models ``names``
    that the ``chapters`` read (all when None)."""
    readers = ("vae", "side-by-side")  # of the likelihood bounds
    table = [*((f"{n}: importance-weighted bounds on the test set (stored)", n, readers, partial(likelihood_bounds, n))
               for n in LIKELIHOOD_MODELS),
             ("vq-vae-restarts: the autoregressive prior over its codes (stored)", "vq-vae-restarts",
              ("vq-vae", "side-by-side"), vq_prior),
             ("ddpm: its samples (stored)", "ddpm", ("diffusion", "side-by-side"), ddpm_samples),
             ("ddpm: its bound on the test set (stored)", "ddpm", ("diffusion", "side-by-side"), ddpm_bound)]
    return [(label, model, task) for label, model, read_by, task in table
            if (names is None or model in names) and (chapters is None or set(read_by) & set(chapters))]


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["LATENTBOOK_PROGRESS"] = "0"  # several bars at once would garble the log


def _timed(task: Callable[[Any], Any], run) -> float:
    start = time.perf_counter()
    task(run)
    return time.perf_counter() - start


def _in_parallel(run, tasks: list[tuple[str, str | None, Callable[[Any], Any]]], jobs: int, log) -> None:
    """Run ``task(run)`` for every ``(label, after, task)``, ``jobs`` at a time in fresh processes: each as soon as
    a process is free and the task labelled ``after`` (if any) has finished, the first such in the list first.
    Each result goes to the store (atomic writes; one writer per entry); the first failure cancels what has not
    started and is raised here."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(threads,))
    waiting, running, finished = list(tasks), {}, set()
    try:
        while waiting or running:
            for item in [t for t in waiting if t[1] is None or t[1] in finished][: jobs - len(running)]:
                waiting.remove(item)
                running[pool.submit(_timed, item[2], run)] = item[0]
            if not running:
                raise RuntimeError(f"these tasks wait for tasks that are not in the list: {[t[0] for t in waiting]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                label = running.pop(future)
                log(f"{label}: {future.result():.0f} s")
                finished.add(label)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def warm(run, names: list[str] | None = None, log=print, *, chapters: list[str] | None = None, jobs: int = 1) -> None:
    """Make every model and stored evaluation of the book ready for this run's settings (only the models ``names``,
    or those the ``chapters`` use): first fetch every entry the published book lists (see :mod:`latentbook.store`),
    then take each model and each stored evaluation from the store, training or computing only what is neither
    stored nor published. ``jobs`` > 1 trains that many models at once in separate processes (see
    :func:`default_jobs`), longest first, each stored evaluation as soon as its model is ready."""
    checks.integer("jobs", jobs)
    if chapters is not None:  # (a chapter without models: nothing to train)
        names = [n for n in names or RECIPES if n in models_for(chapters)]
    url = store.models_url()
    listed = store.manifest(url) if url else "no published address is configured"
    if isinstance(listed, str):
        log(f"published weights: none fetched ({listed})")
    else:
        fetched = store.fetch_all(url, log=log)
        log(f"published weights: {fetched} of {len(listed['entries'])} entries ready from {url}")
    model_names = list(RECIPES if names is None or (chapters is None and not names) else names)
    for name in model_names:
        recipe(name)  # an unknown name fails before any work
    evaluations = _evaluations(names, chapters)
    if jobs > 1:
        missing, keys = [], set()
        for name in model_names:
            cfg = config(name, run)
            key = store.key_of(cfg)
            if key not in keys and store.get(cfg, fetch=False) is None:  # two names of one recipe: trained once
                missing.append(name)
            keys.add(key)
        missing.sort(key=lambda n: _training_flops(n, run), reverse=True)
        data.load(run.dataset, "train", n=1)  # fetched once here, not by two workers at once
        log(f"training {len(missing)} models and making {len(evaluations)} stored evaluations, {jobs} at a time ...")
        # An evaluation starts as soon as its model is trained (before further models: the longest tasks first)
        # so that the last minutes do not leave a core idle; models that are not trained here are stored.
        _in_parallel(run, [*((label, model if model in missing else None, task) for label, model, task in evaluations),
                           *((n, None, partial(get, n)) for n in missing)], jobs, log)
    for name in model_names:
        log(f"{name}: {recipe(name).about}")
        get(name, run)
    for label, _, task in evaluations:
        log(label)
        task(run)

"""One training loop for every model, and trained models kept in the store by what they are.

    history = fit(model, x_train, epochs=10)                       # data held as tensors on the device
    model, history = train_cached({"arch": "vae", "latent_dim": 2}, epochs=10)   # trained once, then loaded

:func:`fit` keeps the whole training set on the device and draws each batch by indexing it with a
seeded permutation: no DataLoader, no per-sample Python work (``benchmarks/bench_trainer.py``
measures the gain over the usual ``DataLoader`` loop).
A DataLoader (or any iterable of batches) is accepted too, for data that does not fit.

:func:`train_cached` keeps the trained weights and history in :mod:`latentbook.store` under the key
of :func:`model_config`: the spec, the recipe, the data, the seed and explicit version numbers
(``VERSION`` here, in ``losses``, ``data`` and ``noise``, and each model class's ``version``). Bump
the one whose change alters trained weights; ``tests/test_store.py`` trains every model class for two
steps and fails when the weights change under an unchanged version. The device is deliberately *not*
in the key: a store filled on a GPU serves a CPU run of the same chapter. (A GPU-trained model is not
bit-identical to a CPU-trained one, since rounding differs and training amplifies it, but it is an
equally good model of the same configuration.)
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentbook import checks, data, losses, models, noise, store
from latentbook.runmode import resolve_device

__all__ = [
    "History",
    "TrainingDivergedError",
    "fit",
    "evaluate_terms",
    "make_optimizer",
    "make_lr_schedule",
    "LR_SCHEDULES",
    "model_config",
    "train_cached",
    "load_or_train",
    "takes_labels",
    "VERSION",
]

VERSION = 1  # of the training loop: bump when a change alters the weights it trains (see the module doc)

# How many steps run between two finiteness checks. Each check synchronises with the device (one
# .item()), so checking every step would stall a GPU; a bad step is still reported exactly.
_CHECK_EVERY = 25

Transform = Callable[[Tensor, torch.Generator], Tensor]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite. The model's weights are then unusable."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]):
        self.epoch, self.step, self.terms = epoch, step, terms
        shown = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: {shown}. "
            "Try a smaller learning rate (lr) or check the data and the loss options."
        )


@dataclass
class History:
    """What :func:`fit` recorded, one entry per epoch.

    train: term -> per-epoch means over the training batches (weighted by batch size), e.g.
    ``{"loss": [...], "recon": [...], "kl": [...]}``; val: the same terms on ``x_val`` at the end of
    each epoch (empty without ``x_val``); epoch_time: wall seconds per epoch (validation included).
    ``history["loss"]`` is ``history.train["loss"]`` and ``history["val_loss"]`` is ``history.val["loss"]``.
    """

    train: dict[str, list[float]] = field(default_factory=dict)
    val: dict[str, list[float]] = field(default_factory=dict)
    epoch_time: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.epoch_time)

    def __getitem__(self, key: str) -> list[float]:
        if key.startswith("val_") and key[4:] in self.val:
            return self.val[key[4:]]
        if key in self.train:
            return self.train[key]
        raise KeyError(f"no term {key!r}; recorded: {sorted(self.train)} and val_ + {sorted(self.val)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats (what the cache stores; loads with ``torch.load(weights_only=True)``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(train={k: list(v) for k, v in d["train"].items()},
                   val={k: list(v) for k, v in d["val"].items()},
                   epoch_time=list(d["epoch_time"]))


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and os.environ.get("LATENTBOOK_PROGRESS", "1").strip() not in ("0", "false", "no", "")


def _tensor_batches(x: Tensor, batch_size: int, gen: torch.Generator,
                    y: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """One epoch of shuffled batches ``(x[i], y[i])`` of ``x: [N, ...]`` and labels ``y: [N]`` (or None),
    already on the generator's device."""
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        idx = perm[start : start + batch_size]
        yield x[idx], (None if y is None else y[idx])


def _iterable_batches(batches: Iterable[Any], device: torch.device,
                      labels: bool = False) -> Iterator[tuple[Tensor, Tensor | None]]:
    """One pass over a DataLoader-like iterable; items are ``x`` or ``(x, y, ...)``; ``y`` is kept when
    ``labels`` (a conditional model)."""
    for item in batches:
        xb = item[0] if isinstance(item, (tuple, list)) else item
        xb = checks.images("each batch of x_train", xb).to(device, non_blocking=True)
        if not labels:
            yield xb, None
            continue
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ValueError("a conditional model needs batches (x, y) with labels; got a batch without labels")
        yield xb, models.check_labels(item[1], len(xb), name="each batch's y").to(device, non_blocking=True)


def takes_labels(model: nn.Module) -> bool:
    """Whether ``model.loss`` takes class labels ``y`` (a conditional model, e.g. the conditional VAE)."""
    loss = getattr(model, "loss", None)
    return callable(loss) and "y" in inspect.signature(loss).parameters


def _loss_call(model: nn.Module, loss_kwargs: dict[str, Any]) -> tuple[bool, bool]:
    """Whether ``model.loss`` takes ``generator`` and ``kl_weight``; rejects unknown loss_kwargs early."""
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"{type(model).__name__} has no loss(x, **kw) method; fit trains latentbook models")
    params = dict(inspect.signature(model.loss).parameters)
    params.pop("y", None)  # labels come from the data (fit's y_train), never from loss_kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        # loss(x, **kw) forwards to a parent's loss (e.g. a subclass adding a term): look there.
        for cls in type(model).__mro__[1:]:
            if "loss" in vars(cls):
                params = inspect.signature(vars(cls)["loss"]).parameters
                if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    break
        else:
            return True, True
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(loss_kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{type(model).__name__}.loss does not accept {unknown}; its options are {allowed}")
    return "generator" in params, "kl_weight" in params


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch and device support it.

    On a CPU the fused update takes about a third of the time of the per-tensor one, which is a
    quarter of a training step for the MLP autoencoder; older torch (< 2.4 on CPU) falls back.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


LR_SCHEDULES = ("constant", "cosine", "onecycle")


def _check_lr_schedule(kind: Any) -> str:
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    return kind


def make_lr_schedule(optimizer: torch.optim.Optimizer, kind: str, lr: float,
                     total_steps: int | None) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule stepped once per batch: ``None`` for ``"constant"`` (``lr`` throughout);
    ``"cosine"``: from ``lr`` down to 0 along a half cosine over ``total_steps``; ``"onecycle"``: Smith &
    Topin's one-cycle policy, up from ``lr/25`` to the peak ``lr`` over the first 30% of the steps, then a
    cosine down to ``lr/25e4``, with Adam's β1 cycled opposite (0.95 -> 0.85 -> 0.95), as torch's
    ``OneCycleLR``. ``benchmarks/bench_time_to_quality.py`` measures what each buys."""
    if _check_lr_schedule(kind) == "constant":
        return None
    if not total_steps:
        raise ValueError(f"lr_schedule={kind!r} needs the number of steps: pass a tensor x_train or an "
                         "iterable with a len()")
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)


def _labels_for(model: nn.Module, y: Any, n: int, name: str) -> Tensor | None:
    """``y`` checked when ``model`` is conditional (then required), refused when it is not."""
    if takes_labels(model):
        if y is None:
            raise ValueError(f"{type(model).__name__} is conditional: give the class labels of the images ({name}=...)")
        return models.check_labels(y, n, name=name)
    if y is not None:
        raise ValueError(f"{type(model).__name__} takes no labels; {name} is only for conditional models")
    return None


def evaluate_terms(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 1024,
    loss_kwargs: dict[str, Any] | None = None,
    transform: Transform | None = None,
    seed: int = 0,
    y: Tensor | None = None,
) -> dict[str, float]:
    """Means over ``x: [N, 1, 28, 28]`` of every term ``model.loss`` reports, without gradients.

    Batches move to the model's device one at a time. Randomness (a VAE's z, a corruption
    ``transform``) comes from a generator seeded with ``seed``, so repeated calls agree.
    y: the class labels ``[N]`` a conditional model needs (see :func:`takes_labels`).
    """
    x = checks.images("x", x)
    y = _labels_for(model, y, len(x), "y")
    checks.integer("batch_size", batch_size)
    loss_kwargs = dict(loss_kwargs or {})
    takes_gen, _ = _loss_call(model, loss_kwargs)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    if takes_gen:
        loss_kwargs["generator"] = gen
    was_training = model.training
    model.eval()
    sums: Tensor | None = None
    keys: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                kw = dict(loss_kwargs) if y is None else {**loss_kwargs, "y": y[start : start + batch_size].to(device)}
                if transform is not None:
                    out = model.loss(transform(xb, gen), target=xb, **kw)
                else:
                    out = model.loss(xb, **kw)
                if sums is None:
                    keys = list(out)
                    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
                sums += torch.stack([out[k].detach().double() for k in keys]) * xb.shape[0]
    finally:
        model.train(was_training)
    assert sums is not None
    return dict(zip(keys, (sums / x.shape[0]).tolist()))


def fit(
    model: nn.Module,
    x_train: Tensor | Iterable[Any],
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    x_val: Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    loss_kwargs: dict[str, Any] | None = None,
    binarize: str | None = None,
    kl_warmup_epochs: int = 0,
    progress: bool = True,
    transform: Transform | None = None,
    y_train: Tensor | None = None,
    y_val: Tensor | None = None,
    lr_schedule: str = "constant",
) -> History:
    """Train ``model`` in place with Adam on ``model.loss``; return the per-epoch :class:`History`.

    x_train: images ``[N, 1, 28, 28]`` in [0, 1] (moved to the device once and batched by a seeded
    permutation each epoch), or a DataLoader / iterable of batches (``x`` or ``(x, y)``), which is
    then responsible for shuffling. x_val: images evaluated after each epoch.
    loss_kwargs: options for ``model.loss`` (e.g. ``{"beta": 4.0}`` or ``{"recon_loss": "mse"}``).
    binarize: ``"dynamic"`` draws x ~ Bernoulli(x) afresh for every batch (x_val is binarised once).
    kl_warmup_epochs: ramp the KL weight linearly from ~0 to 1 over this many epochs (VAEs).
    transform: ``transform(x, generator) -> x_in``, applied per batch; the model then sees ``x_in``
    and reconstructs ``x`` (``loss(x_in, target=x)``), e.g. noise for a denoising autoencoder.
    progress: a tqdm bar (off also when ``$LATENTBOOK_PROGRESS=0``).
    y_train, y_val: class labels ``[N]`` of x_train and x_val, for a conditional model (one whose
    ``loss`` takes ``y``, e.g. the conditional VAE); each batch's labels are passed as ``loss(x, y=y)``.
    lr_schedule: ``"constant"``, ``"cosine"`` or ``"onecycle"`` (peak ``lr``), see :func:`make_lr_schedule`.

    Same seed, data and device -> bit-identical weights on a CPU. (The model's initial weights come
    from whoever built it; :func:`train_cached` seeds that too.) Raises :class:`TrainingDivergedError`
    if the loss turns NaN or infinite. Returns with the model in eval mode on ``device``.
    """
    checks.integer("epochs", epochs)
    checks.integer("batch_size", batch_size)
    checks.integer("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if binarize not in (None, "dynamic"):
        raise ValueError(f"binarize must be None or 'dynamic', got {binarize!r}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be a callable transform(x, generator) -> x, got {type(transform).__name__}")
    loss_kwargs = dict(loss_kwargs or {})
    takes_gen, takes_kl_weight = _loss_call(model, loss_kwargs)
    if kl_warmup_epochs and not takes_kl_weight:
        raise ValueError(f"kl_warmup_epochs needs a model with a KL term (a VAE); {type(model).__name__}.loss has no kl_weight")
    if kl_warmup_epochs and "kl_weight" in loss_kwargs:
        raise ValueError("give either kl_warmup_epochs or loss_kwargs['kl_weight'], not both")

    dev = resolve_device(device)
    model.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    labels = takes_labels(model)
    if isinstance(x_train, Tensor):
        x_train = checks.images("x_train", x_train).to(dev)
        n_train = x_train.shape[0]
        y_train = _labels_for(model, y_train, n_train, "y_train")
        y_train = None if y_train is None else y_train.to(dev)
        steps_per_epoch: int | None = math.ceil(n_train / batch_size)

        def epoch_batches() -> Iterator[tuple[Tensor, Tensor | None]]:
            return _tensor_batches(x_train, batch_size, gen, y_train)
    elif isinstance(x_train, Iterable):
        if y_train is not None:
            raise ValueError("y_train goes with a tensor x_train; an iterable of batches carries its labels as (x, y)")
        steps_per_epoch = len(x_train) if hasattr(x_train, "__len__") else None

        def epoch_batches() -> Iterator[tuple[Tensor, Tensor | None]]:
            return _iterable_batches(x_train, dev, labels)
    else:
        raise TypeError(f"x_train must be a tensor of images or an iterable of batches, got {type(x_train).__name__}")
    if x_val is not None:
        x_val = checks.images("x_val", x_val)
        y_val = _labels_for(model, y_val, len(x_val), "y_val")
        if binarize == "dynamic":
            # One fixed binarisation, so that validation numbers compare across epochs.
            val_gen = torch.Generator(device=x_val.device).manual_seed(seed + 1)
            x_val = torch.bernoulli(x_val, generator=val_gen)

    optimizer = make_optimizer(model, lr)
    scheduler = make_lr_schedule(optimizer, lr_schedule, lr, epochs * steps_per_epoch if steps_per_epoch else None)
    history = History()
    warmup_steps = kl_warmup_epochs * steps_per_epoch if (kl_warmup_epochs and steps_per_epoch) else None
    bar = tqdm(
        total=epochs * steps_per_epoch if steps_per_epoch else None,
        desc=f"{type(model).__name__}", unit="step", disable=not _progress_enabled(progress), leave=True,
    )
    global_step = 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            keys: list[str] = []
            pending: list[Tensor] = []  # per-step [n_terms] rows not yet checked
            sizes: list[int] = []
            sums: Tensor | None = None
            count = 0
            step = 0

            def flush() -> None:
                """Check the pending steps for a non-finite loss and add them to the epoch sums."""
                nonlocal sums, pending, sizes, count
                if not pending:
                    return
                rows = torch.stack(pending).double()  # [k, n_terms]
                w = torch.tensor(sizes, dtype=torch.float64, device=rows.device)
                bad = ~torch.isfinite(rows[:, 0])  # column 0 is "loss"
                if bool(bad.any()):
                    i = int(bad.nonzero()[0])
                    raise TrainingDivergedError(epoch, step - len(pending) + 1 + i, dict(zip(keys, rows[i].tolist())))
                part = (rows * w[:, None]).sum(0)
                sums = part if sums is None else sums + part
                count += sum(sizes)
                bar.update(len(pending))
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{rows[-1, 0].item():.4g}", refresh=False)
                pending, sizes = [], []

            for xb, yb in epoch_batches():
                step += 1
                global_step += 1
                if binarize == "dynamic":
                    xb = torch.bernoulli(xb, generator=gen)
                kw = dict(loss_kwargs) if yb is None else {**loss_kwargs, "y": yb}
                if takes_gen:
                    kw["generator"] = gen
                if warmup_steps:
                    kw["kl_weight"] = min(1.0, global_step / warmup_steps)
                elif kl_warmup_epochs:  # iterable without len(): ramp per epoch
                    kw["kl_weight"] = min(1.0, epoch / kl_warmup_epochs)
                if transform is not None:
                    x_in = transform(xb, gen)
                    if not isinstance(x_in, Tensor) or x_in.shape != xb.shape:
                        raise ValueError(f"transform must return a tensor shaped like its input {tuple(xb.shape)}")
                    out = model.loss(x_in, target=xb, **kw)
                else:
                    out = model.loss(xb, **kw)
                if not keys:
                    if "loss" not in out:
                        raise KeyError(f"{type(model).__name__}.loss must return a dict with a 'loss' entry, got {sorted(out)}")
                    keys = ["loss", *(k for k in out if k != "loss")]
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                pending.append(torch.stack([out[k].detach().float() for k in keys]))
                sizes.append(xb.shape[0])
                if len(pending) >= _CHECK_EVERY:
                    flush()
            flush()
            if step == 0:
                raise ValueError("x_train yielded no batches (a generator can be iterated only once: pass a DataLoader or a list)")
            assert sums is not None
            for k, v in zip(keys, (sums / count).tolist()):
                history.train.setdefault(k, []).append(v)
            if x_val is not None:
                # Validation scores the un-annealed objective: loss_kwargs without the warm-up weight.
                for k, v in evaluate_terms(model, x_val, batch_size=max(batch_size, 1024), loss_kwargs=loss_kwargs,
                                           transform=transform, seed=seed + 2, y=y_val).items():
                    history.val.setdefault(k, []).append(v)
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{history.train['loss'][-1]:.4g}",
                                val_loss=f"{history.val['loss'][-1]:.4g}", refresh=False)
            history.epoch_time.append(time.perf_counter() - t0)
    finally:
        bar.close()
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Trained once, then kept: models in the store
# ---------------------------------------------------------------------------------------------


def _check_classes(classes: Any) -> list[int]:
    """Sorted distinct class indices in 0..9 (a training set without these classes)."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"exclude_classes must be a non-empty list of class indices 0..9, got {classes!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 9 for c in classes):
        raise ValueError(f"exclude_classes must hold class indices 0..9, got {classes!r}")
    if len(set(classes)) == 10:
        raise ValueError("exclude_classes cannot exclude all ten classes")
    return sorted(set(classes))


def model_config(
    spec: dict[str, Any], *, dataset: str, n_train: int | None, epochs: int, batch_size: int, lr: float,
    seed: int, loss_kwargs: dict[str, Any] | None = None, binarize: str | None = None, kl_warmup_epochs: int = 0,
    corruption: dict[str, Any] | None = None, exclude_classes: list[int] | None = None,
    lr_schedule: str = "constant",
) -> dict[str, Any]:
    """What a trained model *is*, as the store's key sees it: the canonical spec, the training recipe,
    the data (name, published checksum, subset), the seed, and the version numbers of the code that
    shapes the weights (the model class and its bases, this trainer, the losses, the data loader, the
    corruptions when used). Neither the device nor the torch version is in it; source bytes never are.
    """
    with torch.random.fork_rng(devices=[]):
        model = models.build(spec)
    recipe: dict[str, Any] = {
        "epochs": checks.integer("epochs", epochs), "batch_size": checks.integer("batch_size", batch_size),
        "lr": float(lr), "loss_kwargs": dict(loss_kwargs or {}), "binarize": binarize,
        "kl_warmup_epochs": checks.integer("kl_warmup_epochs", kl_warmup_epochs, minimum=0),
    }
    if _check_lr_schedule(lr_schedule) != "constant":  # absent for a constant rate, so the keys of earlier models stand
        recipe["lr_schedule"] = lr_schedule
    versions = {**models.versions_of(type(model)), "trainer": VERSION, "losses": losses.VERSION, "data": data.VERSION}
    if corruption is not None:
        recipe["corruption"] = noise.check_spec(corruption)
        versions["noise"] = noise.VERSION
    subset: dict[str, Any] = {"split": "train", "n": n_train}
    if exclude_classes is not None:
        subset["exclude_classes"] = _check_classes(exclude_classes)
    return store.canonical({
        "kind": "model",
        "spec": models.spec_of(model),  # {"arch": "vae"} and its spelled-out defaults agree
        "recipe": recipe,
        "data": {**data.identity(dataset), **subset},
        "seed": checks.integer("seed", seed, minimum=0),
        "versions": versions,
    })


def train_cached(
    spec: dict[str, Any],
    *,
    dataset: str = "mnist",
    n_train: int | None = None,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    loss_kwargs: dict[str, Any] | None = None,
    binarize: str | None = None,
    kl_warmup_epochs: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    retrain: bool = False,
    corruption: dict[str, Any] | None = None,
    exclude_classes: list[int] | None = None,
    lr_schedule: str = "constant",
) -> tuple[nn.Module, History]:
    """The model ``models.build(spec)`` trained by :func:`fit` on the first ``n_train`` training
    images of ``dataset`` (all when None): from the store when this configuration (:func:`model_config`)
    was trained before, here or for the published book (fetched, hash checked), else trained now and
    stored. Returns ``(model in eval mode on device, History)``.

    The initial weights are drawn with torch's RNG seeded by ``seed`` inside a forked RNG, so the
    caller's random state is the same whether the model was trained or loaded. ``retrain`` ignores the
    store. ``cache_dir``: the store folder (see :func:`latentbook.store.folder`).

    corruption: a named corruption spec such as ``{"kind": "gaussian", "level": 0.5}`` (see
    :mod:`latentbook.noise`): a denoising autoencoder, trained by :func:`fit` with
    ``transform=noise.transform(corruption)``. exclude_classes: class indices left out of the
    first ``n_train`` training images (e.g. ``[8]`` for an anomaly detector that never saw an 8).
    lr_schedule: see :func:`fit`.
    """
    config = model_config(spec, dataset=dataset, n_train=n_train, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=seed, loss_kwargs=loss_kwargs, binarize=binarize, kl_warmup_epochs=kl_warmup_epochs,
                          corruption=corruption, exclude_classes=exclude_classes, lr_schedule=lr_schedule)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(config["spec"])

    def train_it() -> History:
        x, y = data.load(dataset, "train", n=n_train, device=dev)
        if "exclude_classes" in config["data"]:
            keep = ~torch.isin(y, torch.tensor(config["data"]["exclude_classes"], device=y.device))
            x, y = x[keep], y[keep]
        transform = noise.transform(corruption) if corruption is not None else None
        return fit(model, x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                   loss_kwargs=loss_kwargs, binarize=binarize, kl_warmup_epochs=kl_warmup_epochs, progress=progress,
                   transform=transform, y_train=y if takes_labels(model) else None, lr_schedule=lr_schedule)

    return load_or_train(config, model, train_it, device=dev, cache_dir=cache_dir, retrain=retrain)


def load_or_train(config: dict[str, Any], model: nn.Module, train_it: Callable[[], History], *,
                  device: torch.device, cache_dir: str | os.PathLike | None = None,
                  retrain: bool = False) -> tuple[nn.Module, History]:
    """``model`` with the stored weights of ``config`` (local or published), or trained by ``train_it()``
    (which trains ``model`` in place) and stored. Returns ``(model in eval mode on device, History)``."""
    entry = None if retrain else store.get(config, folder_=cache_dir)
    if entry is not None:
        model.load_state_dict(entry.tensors)
        return model.to(device).eval(), History.from_dict(entry.info["history"])
    history = train_it()
    store.put(config, model.state_dict(), {"history": history.to_dict()},
              meta={"device": device.type, "train_seconds": round(sum(history.epoch_time), 3)}, folder_=cache_dir)
    return model.eval(), history

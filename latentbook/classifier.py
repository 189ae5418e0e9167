"""A small image classifier: the judge of generated images (chapters "vae" and "side by side").

Is a decoded random code a recognisable digit? A person would say so at a glance; the book asks a
classifier trained on real digits instead, and reads its confidence (the probability of its top
class, :func:`latentbook.evaluate.classifier_confidence`): high on real test digits, low on blurred
mixtures of two digits and on noise. It is a measuring instrument, not a subject of the book, so it
is small (two stride-2 convolutions and a dense layer) and trains in a few seconds per epoch. A plain
classifier is confidently wrong off its training data, so the book's judge is also shown blends of two
digits and noise with targets that say "unclear" (the ``blend`` and ``noise`` options of :func:`fit`)::

    clf, history = zoo.get("digit-classifier", run)   # trained once, then loaded from the cache
    clf, history = classifier.train_cached({"arch": "digit_classifier"}, epochs=3)

Training needs labels, which :func:`latentbook.train.fit` (reconstruction objectives) never sees, so
this module has its own short loop (:func:`fit`). Trained classifiers are kept in the store with every
other model (``python -m latentbook cache info`` lists them), keyed by their spec, data, training
options, seed and version numbers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbook import checks, data, models, store, train
from latentbook.runmode import resolve_device

__all__ = ["DigitClassifier", "build", "fit", "accuracy", "train_cached"]

ARCH = "digit_classifier"
VERSION = 1  # of this module's training loop (fit): bump when a change alters the weights it trains


class DigitClassifier(nn.Module):
    """``[B, 1, 28, 28] -> [B, n_classes]`` logits: conv 3×3 stride 2 (28 -> 14 -> 7), then dense layers.

    channels: the two convolutions' widths; hidden: the dense layer before the output.
    """

    arch = ARCH
    version = 1  # bump when a change alters the weights it trains to (store keys)

    def __init__(self, channels: Sequence[int] = (16, 32), hidden: int = 128, n_classes: int = 10):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive integers, got {list(channels)!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self.hidden, self.n_classes = hidden, n_classes
        c1, c2 = self.channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(),  # [B, c1, 14, 14]
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),  # [B, c2, 7, 7]
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def config(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "hidden": self.hidden, "n_classes": self.n_classes}

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, 1, 28, 28]`` (or ``[B, 784]``) in [0, 1] -> logits ``[B, n_classes]``."""
        return self.net(models.as_images(x))


def build(spec: dict[str, Any]) -> DigitClassifier:
    """A fresh classifier from ``{"arch": "digit_classifier", **constructor arguments}``."""
    if not isinstance(spec, dict) or spec.get("arch") != ARCH:
        raise ValueError(f"a classifier spec is a dict with 'arch': {ARCH!r}, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    unknown = sorted(set(kwargs) - {"channels", "hidden", "n_classes"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {ARCH!r}; it accepts channels, hidden, n_classes")
    return DigitClassifier(**kwargs)


def _check_labelled(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    checks.images("x", x)
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32, torch.uint8) or y.shape != x.shape[:1]:
        raise ValueError(f"y must be integer labels [N] = [{len(x)}], got {getattr(y, 'shape', type(y))}")
    return x, y.long()


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    blend: float = 0.0,
    noise: float = 0.0,
) -> train.History:
    """Train ``model`` in place with Adam on cross-entropy; ``x: [N, 1, 28, 28]``, ``y: [N]`` integer labels.

    Batches come from a seeded permutation of the data held on the device (as in
    :func:`latentbook.train.fit`). Returns a :class:`~latentbook.train.History` with the per-epoch
    training ``loss`` (nats, on the real images) and ``accuracy``; the model is left in eval mode.

    A plain classifier is confidently wrong far from its training data (it may call uniform noise a
    digit with 90 % confidence). Two options teach it to say "I cannot tell", which is what a judge
    of generated images needs. Each batch of ``B`` real images gets

    - ``blend``: ``round(blend * B)`` extra images ``t x_a + (1 - t) x_b`` of two images of the batch
      with ``t ~ U(0, 1)`` and the soft target ``t e_a + (1 - t) e_b`` (mixup, Zhang et al. 2018,
      with a uniform mixing weight); two digits laid over each other are then not one clear digit;
    - ``noise``: ``round(noise * B)`` extra images of uniform noise in [0, 1] with the uniform target
      ``1/C`` for every class (outlier exposure, Hendrycks et al. 2019).
    """
    x, y = _check_labelled(x, y)
    checks.integer("epochs", epochs)
    checks.integer("batch_size", batch_size)
    for name, v in (("blend", blend), ("noise", noise)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 4:
            raise ValueError(f"{name} (extra images per real image) must be a number in [0, 4], got {v!r}")
    n_classes = getattr(model, "n_classes", int(y.max()) + 1)
    dev = resolve_device(device)
    model.to(dev).train()
    x, y = x.to(dev), y.to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    opt = train.make_optimizer(model, lr)
    history = train.History()
    for _ in range(epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        perm = torch.randperm(len(x), generator=gen, device=dev)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            n_blend, n_noise = round(blend * len(idx)), round(noise * len(idx))
            if n_blend or n_noise:
                inputs, targets = [xb], [F.one_hot(yb, n_classes).to(xb.dtype)]
                if n_blend:
                    a = torch.randint(len(idx), (n_blend,), generator=gen, device=dev)
                    b = torch.randint(len(idx), (n_blend,), generator=gen, device=dev)
                    t = torch.rand(n_blend, generator=gen, device=dev, dtype=xb.dtype)
                    inputs.append(t.view(-1, 1, 1, 1) * xb[a] + (1 - t.view(-1, 1, 1, 1)) * xb[b])
                    targets.append(t[:, None] * targets[0][a] + (1 - t[:, None]) * targets[0][b])
                if n_noise:
                    inputs.append(torch.rand(n_noise, *xb.shape[1:], generator=gen, device=dev, dtype=xb.dtype))
                    targets.append(torch.full((n_noise, n_classes), 1.0 / n_classes, device=dev, dtype=xb.dtype))
                all_logits = model(torch.cat(inputs))
                logits = all_logits[: len(idx)]
                loss_all = F.cross_entropy(all_logits, torch.cat(targets))  # soft targets
                loss = F.cross_entropy(logits.detach(), yb)  # what the history reports: real images only
            else:
                logits = model(xb)
                loss_all = loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss_all.backward()
            opt.step()
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
        mean_loss = (loss_sum / len(x)).item()
        if not math.isfinite(mean_loss):
            raise train.TrainingDivergedError(len(history.epoch_time) + 1, 0, {"loss": mean_loss})
        history.train.setdefault("loss", []).append(mean_loss)
        history.train.setdefault("accuracy", []).append(correct.item() / len(x))
        history.epoch_time.append(time.perf_counter() - t0)
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Share of ``x: [N, 1, 28, 28]`` whose top class is the label ``y: [N]``."""
    x, y = _check_labelled(x, y)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(x), batch_size):
        pred = model(x[start : start + batch_size].to(dev)).argmax(1).cpu()
        hits += int((pred == y[start : start + batch_size].cpu()).sum())
    model.train(was_training)
    return hits / len(x)


def model_config(spec: dict[str, Any], *, dataset: str, n_train: int | None, epochs: int, batch_size: int,
                 lr: float, seed: int, blend: float, noise: float) -> dict[str, Any]:
    """What a trained classifier *is*, as the store's key sees it (as :func:`latentbook.train.model_config`)."""
    with torch.random.fork_rng(devices=[]):
        canonical = {"arch": ARCH, **build(spec).config()}
    return store.canonical({
        "kind": "classifier",
        "spec": canonical,
        "recipe": {"epochs": checks.integer("epochs", epochs), "batch_size": checks.integer("batch_size", batch_size),
                   "lr": float(lr), "blend": float(blend), "noise": float(noise)},
        "data": {**data.identity(dataset), "split": "train", "n": n_train},
        "seed": checks.integer("seed", seed, minimum=0),
        "versions": {"DigitClassifier": DigitClassifier.version, "classifier_trainer": VERSION, "data": data.VERSION},
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
    blend: float = 0.0,
    noise: float = 0.0,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
) -> tuple[DigitClassifier, train.History]:
    """The classifier ``build(spec)`` trained by :func:`fit` on the first ``n_train`` labelled training
    images of ``dataset`` (all when None), with the ``blend`` and ``noise`` options of :func:`fit`, read
    from the store when this configuration was trained before (here, or for the published book).
    Returns ``(model in eval mode on device, History)``; the caller's RNG state is untouched.
    """
    config = model_config(spec, dataset=dataset, n_train=n_train, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=seed, blend=blend, noise=noise)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config["spec"])

    def train_it() -> train.History:
        x, y = data.load(dataset, "train", n=n_train, device=dev)
        return fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                   blend=blend, noise=noise)

    return train.load_or_train(config, model, train_it, device=dev, cache_dir=cache_dir, retrain=retrain)

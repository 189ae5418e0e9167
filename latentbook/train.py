"""One training loop for every model, and a cache of trained models keyed by their full configuration.

    history = fit(model, x_train, epochs=10)                       # data held as tensors on the device
    model, history = train_cached({"arch": "vae", "latent_dim": 2}, epochs=10)   # trained once, then loaded

:func:`fit` keeps the whole training set on the device and draws each batch by indexing it with a
seeded permutation: no DataLoader, no per-sample Python work (``benchmarks/bench_trainer.py``
measures the gain over the usual ``DataLoader`` loop).
A DataLoader (or any iterable of batches) is accepted too, for data that does not fit.

:func:`train_cached` stores ``{state_dict, history, config}`` under ``<cache_dir>/<key>.pt``, where
the key hashes everything that determines the weights: the model spec, the data set and its size,
epochs, batch size, learning rate, seed, loss options, binarisation, KL warm-up and the source code
of ``models.py``, ``losses.py``, ``train.py`` and ``noise.py`` (edit them and the model is retrained),
and, when given, a denoising corruption spec and the classes left out of the training set. The device
is deliberately *not* in the key: a cache warmed on a GPU serves a CPU run of the same chapter.
(A GPU-trained model is not bit-identical to a CPU-trained one, since rounding differs and training
amplifies it, but it is an equally good model of the same configuration; what ran where is
whatever filled the cache first.)

The cache folder is ``cache_dir``, else ``$LATENTBOOK_MODELS``, else the user cache folder
(``platformdirs.user_cache_dir("latentbook")/models``). Each entry has a small ``<key>.json``
description beside it, which :func:`cache_info` lists (``python -m latentbook cache info``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentbook import data, losses, models, noise
from latentbook.runmode import resolve_device

__all__ = [
    "History",
    "TrainingDivergedError",
    "fit",
    "evaluate_terms",
    "make_optimizer",
    "train_cached",
    "cache_folder",
    "cache_key",
    "cache_info",
    "clear_cache",
    "CacheInfo",
]

# How many steps run between two finiteness checks. Each check synchronises with the device (one
# .item()), so checking every step would stall a GPU; a bad step is still reported exactly.
_CHECK_EVERY = 25
_FORMAT = 1  # bump when the layout of a cache entry changes
_KEY_RE = re.compile(r"^[0-9a-f]{16}$")

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


def _check_positive_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _check_images(name: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of images [N, 1, 28, 28] (or a DataLoader for x_train), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of images [N, 1, 28, 28], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold floats in [0, 1], got dtype {x.dtype} (divide uint8 pixels by 255)")
    return x


def _tensor_batches(x: Tensor, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """One epoch of shuffled batches of ``x: [N, ...]`` (already on the generator's device)."""
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        yield x[perm[start : start + batch_size]]


def _iterable_batches(batches: Iterable[Any], device: torch.device) -> Iterator[Tensor]:
    """One pass over a DataLoader-like iterable; items are ``x`` or ``(x, y, ...)``."""
    for item in batches:
        xb = item[0] if isinstance(item, (tuple, list)) else item
        yield _check_images("each batch of x_train", xb).to(device, non_blocking=True)


def _loss_call(model: nn.Module, loss_kwargs: dict[str, Any]) -> tuple[bool, bool]:
    """Whether ``model.loss`` takes ``generator`` and ``kl_weight``; rejects unknown loss_kwargs early."""
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"{type(model).__name__} has no loss(x, **kw) method; fit trains latentbook models")
    params = inspect.signature(model.loss).parameters
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


def evaluate_terms(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 1024,
    loss_kwargs: dict[str, Any] | None = None,
    transform: Transform | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Means over ``x: [N, 1, 28, 28]`` of every term ``model.loss`` reports, without gradients.

    Batches move to the model's device one at a time. Randomness (a VAE's z, a corruption
    ``transform``) comes from a generator seeded with ``seed``, so repeated calls agree.
    """
    x = _check_images("x", x)
    _check_positive_int("batch_size", batch_size)
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
                if transform is not None:
                    out = model.loss(transform(xb, gen), target=xb, **loss_kwargs)
                else:
                    out = model.loss(xb, **loss_kwargs)
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

    Same seed, data and device -> bit-identical weights on a CPU. (The model's initial weights come
    from whoever built it; :func:`train_cached` seeds that too.) Raises :class:`TrainingDivergedError`
    if the loss turns NaN or infinite. Returns with the model in eval mode on ``device``.
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
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
    if isinstance(x_train, Tensor):
        x_train = _check_images("x_train", x_train).to(dev)
        n_train = x_train.shape[0]
        steps_per_epoch: int | None = math.ceil(n_train / batch_size)

        def epoch_batches() -> Iterator[Tensor]:
            return _tensor_batches(x_train, batch_size, gen)
    elif isinstance(x_train, Iterable):
        steps_per_epoch = len(x_train) if hasattr(x_train, "__len__") else None

        def epoch_batches() -> Iterator[Tensor]:
            return _iterable_batches(x_train, dev)
    else:
        raise TypeError(f"x_train must be a tensor of images or an iterable of batches, got {type(x_train).__name__}")
    if x_val is not None:
        x_val = _check_images("x_val", x_val)
        if binarize == "dynamic":
            # One fixed binarisation, so that validation numbers compare across epochs.
            val_gen = torch.Generator(device=x_val.device).manual_seed(seed + 1)
            x_val = torch.bernoulli(x_val, generator=val_gen)

    optimizer = make_optimizer(model, lr)
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

            for xb in epoch_batches():
                step += 1
                global_step += 1
                if binarize == "dynamic":
                    xb = torch.bernoulli(xb, generator=gen)
                kw = dict(loss_kwargs)
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
                                           transform=transform, seed=seed + 2).items():
                    history.val.setdefault(k, []).append(v)
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{history.train['loss'][-1]:.4g}",
                                val_loss=f"{history.val['loss'][-1]:.4g}", refresh=False)
            history.epoch_time.append(time.perf_counter() - t0)
    finally:
        bar.close()
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------
# The model cache
# ---------------------------------------------------------------------------------------------


def cache_folder(path: str | os.PathLike | None = None) -> Path:
    """The model cache folder: ``path``, else ``$LATENTBOOK_MODELS``, else the user cache folder."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("LATENTBOOK_MODELS", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("latentbook")) / "models"


def _code_fingerprint() -> str:
    """SHA-256 of the code that determines trained weights: models.py, losses.py, train.py and noise.py."""
    h = hashlib.sha256()
    for source in (models.__file__, losses.__file__, __file__, noise.__file__):
        h.update(Path(source).read_bytes())
    return h.hexdigest()


def _cache_config(
    spec: dict[str, Any], *, dataset: str, n_train: int | None, epochs: int, batch_size: int, lr: float,
    seed: int, loss_kwargs: dict[str, Any] | None, binarize: str | None, kl_warmup_epochs: int,
    corruption: dict[str, Any] | None = None, exclude_classes: list[int] | None = None,
) -> dict[str, Any]:
    """Everything that determines the trained weights, as JSON-able values (the device excluded).

    ``corruption`` and ``exclude_classes`` enter the configuration only when given, so the keys of
    models trained without them are those they always had.
    """
    with torch.random.fork_rng(devices=[]):
        canonical = models.spec_of(models.build(spec))  # {"arch": "vae"} and its spelled-out defaults agree
    config = {
        "format": _FORMAT,
        "spec": canonical,
        "dataset": data._canonical_name(dataset),
        "n_train": n_train,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": float(lr),
        "seed": seed,
        "loss_kwargs": dict(loss_kwargs or {}),
        "binarize": binarize,
        "kl_warmup_epochs": kl_warmup_epochs,
        "code": _code_fingerprint(),
    }
    if corruption is not None:
        config["corruption"] = noise.check_spec(corruption)
    if exclude_classes is not None:
        config["exclude_classes"] = _check_classes(exclude_classes)
    try:
        # A JSON round trip normalises tuples to lists, so equal configs compare equal after loading.
        return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the training configuration must be JSON-able (numbers, strings, lists, dicts): {exc}") from None


def _check_classes(classes: Any) -> list[int]:
    """Sorted distinct class indices in 0..9 (a training set without these classes)."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"exclude_classes must be a non-empty list of class indices 0..9, got {classes!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 9 for c in classes):
        raise ValueError(f"exclude_classes must hold class indices 0..9, got {classes!r}")
    if len(set(classes)) == 10:
        raise ValueError("exclude_classes cannot exclude all ten classes")
    return sorted(set(classes))


def cache_key(config: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _state_checksum(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success move it into place, on error delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _save_entry(path: Path, entry: dict[str, Any]) -> None:
    """Write the entry, then its ``.json`` description, each atomically."""
    with _atomic_path(path) as tmp:
        torch.save(entry, tmp)
    info = {
        "key": path.stem,
        "config": entry["config"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(sum(entry["history"]["epoch_time"]), 2),
        "final_loss": entry["history"]["train"]["loss"][-1],
        "bytes": path.stat().st_size,
    }
    with _atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True))


def _load_entry(path: Path, config: dict[str, Any]) -> tuple[dict[str, Tensor], History] | str:
    """The cached ``(state_dict, history)``, or a one-line reason why the entry cannot be used."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, garbage bytes, unpickling refused...
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if not isinstance(entry, dict) or not {"config", "state_dict", "history", "checksum"} <= set(entry):
        return "not a latentbook cache entry"
    if entry["config"] != config:
        return "its stored configuration does not match its key"
    if _state_checksum(entry["state_dict"]) != entry["checksum"]:
        return "weights checksum mismatch"
    try:
        history = History.from_dict(entry["history"])
    except (KeyError, TypeError, AttributeError) as exc:
        return f"malformed history ({exc})"
    return entry["state_dict"], history


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
) -> tuple[nn.Module, History]:
    """The model ``models.build(spec)`` trained by :func:`fit` on the first ``n_train`` training
    images of ``dataset`` (all when None), loaded from the cache when this exact configuration was
    trained before. Returns ``(model in eval mode on device, History)``.

    The initial weights are drawn with torch's RNG seeded by ``seed`` inside a forked RNG, so the
    caller's random state is the same whether the model was trained or loaded. A cache entry that
    cannot be read or fails its checks is reported in one warning line and retrained; ``retrain``
    ignores the cache. Cache location: see :func:`cache_folder`.

    corruption: a named corruption spec such as ``{"kind": "gaussian", "level": 0.5}`` (see
    :mod:`latentbook.noise`): a denoising autoencoder, trained by :func:`fit` with
    ``transform=noise.transform(corruption)``. exclude_classes: class indices left out of the
    first ``n_train`` training images (e.g. ``[8]`` for an anomaly detector that never saw an 8).
    Both are part of the cache key.
    """
    config = _cache_config(spec, dataset=dataset, n_train=n_train, epochs=epochs, batch_size=batch_size, lr=lr,
                           seed=seed, loss_kwargs=loss_kwargs, binarize=binarize, kl_warmup_epochs=kl_warmup_epochs,
                           corruption=corruption, exclude_classes=exclude_classes)
    folder = cache_folder(cache_dir)
    path = folder / f"{cache_key(config)}.pt"
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.build(config["spec"])

    if path.exists() and not retrain:
        loaded = _load_entry(path, config)
        if isinstance(loaded, str):
            warnings.warn(f"latentbook: cached model {path} is unusable ({loaded}); retraining", RuntimeWarning, stacklevel=2)
        else:
            state, history = loaded
            model.load_state_dict(state)
            return model.to(dev).eval(), history

    x, y = data.load(config["dataset"], "train", n=n_train, device=dev)
    if "exclude_classes" in config:
        x = x[~torch.isin(y, torch.tensor(config["exclude_classes"], device=y.device))]
    transform = noise.transform(config["corruption"]) if "corruption" in config else None
    history = fit(model, x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                  loss_kwargs=loss_kwargs, binarize=binarize, kl_warmup_epochs=kl_warmup_epochs, progress=progress,
                  transform=transform)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    entry = {"format": _FORMAT, "config": config, "state_dict": state,
             "history": history.to_dict(), "checksum": _state_checksum(state)}
    try:
        _save_entry(path, entry)
    except OSError as exc:  # a read-only or full disk costs the cache, not the trained model
        warnings.warn(f"latentbook: could not cache the model at {path} ({exc})", RuntimeWarning, stacklevel=2)
    return model, history


# ---------------------------------------------------------------------------------------------
# Listing and clearing the cache (python -m latentbook cache info|clear)
# ---------------------------------------------------------------------------------------------


@dataclass
class CacheInfo:
    """The entries of a cache folder: one dict per model (``key``, ``config``, ``bytes``, ...)."""

    folder: Path
    entries: list[dict[str, Any]]
    removed: bool = False  # True when this lists what clear_cache deleted

    @property
    def total_bytes(self) -> int:
        return sum(e.get("bytes", 0) for e in self.entries)

    def __str__(self) -> str:
        size = f"{self.total_bytes / 1e6:.1f} MB"
        n = len(self.entries)
        head = (f"removed {n} cached model(s), {size}, from {self.folder}" if self.removed
                else f"{n} cached model(s), {size}, in {self.folder}")
        lines = [head]
        for e in self.entries:
            c = e.get("config") or {}
            spec = c.get("spec", {})
            what = ", ".join(f"{k}={v}" for k, v in spec.items()) or "(no description)"
            data_part = f"{c.get('dataset', '?')} n={c.get('n_train') or 'all'} epochs={c.get('epochs', '?')}" if c else ""
            lines.append(f"  {e['key']}  {e.get('bytes', 0) / 1e6:6.1f} MB  {what}  {data_part}".rstrip())
        return "\n".join(lines)


def cache_info(cache_dir: str | os.PathLike | None = None) -> CacheInfo:
    """What the model cache holds (read from the ``.json`` descriptions; the weights are not loaded)."""
    folder = cache_folder(cache_dir)
    entries = []
    for pt in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        if not _KEY_RE.match(pt.stem):
            continue
        try:
            info = json.loads(pt.with_suffix(".json").read_text())
        except (OSError, ValueError):
            info = {}
        info.update(key=pt.stem, bytes=pt.stat().st_size)
        entries.append(info)
    return CacheInfo(folder, entries)


def clear_cache(cache_dir: str | os.PathLike | None = None) -> CacheInfo:
    """Delete every cached model (and leftover temporary files); other files in the folder are kept."""
    info = cache_info(cache_dir)
    folder = info.folder
    if folder.is_dir():
        for p in folder.iterdir():
            ours = _KEY_RE.match(p.stem) and p.suffix in (".pt", ".json")
            leftover = p.name.startswith(".") and p.name.endswith(".tmp") and _KEY_RE.match(p.name[1:17])
            if p.is_file() and (ours or leftover):
                p.unlink(missing_ok=True)
    info.removed = True
    return info

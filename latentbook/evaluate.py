"""Evaluation: codes, reconstructions, likelihoods, probes and anomaly metrics.

Every function here works on any of the book's models through one dispatch point
(:func:`encode` / :func:`reconstruct`):

- PCA (anything with ``transform`` and ``inverse_transform``),
- autoencoders (``encode(x) -> z``, ``decode(z) -> x_hat``),
- VAEs (``encode(x) -> (mu, logvar)``; the code of an image is its posterior mean ``mu``).

Model-facing functions run under ``torch.no_grad`` in eval mode, move one batch at a time to the
model's device (so a GPU never holds more than a batch) and return results on the device of ``x``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latentbook import checks, losses, models, montecarlo, noise, store, train

__all__ = [
    "VERSION",
    "cached_result",
    "model_device",
    "encode",
    "decode",
    "decoder",
    "reconstruct",
    "per_sample_errors",
    "reconstruction_mse",
    "psnr",
    "jacobian_norms",
    "denoising_errors",
    "test_elbo",
    "log_likelihood",
    "iwae_bounds",
    "active_units",
    "kl_per_dimension",
    "class_probabilities",
    "classifier_confidence",
    "linear_probe",
    "anomaly_scores",
    "threshold_at_percentile",
    "roc_auc",
    "detection_report",
]

VERSION = 1  # of the evaluations stored by cached_result: bump when a change alters their values

# ---------------------------------------------------------------------------------------------
# Dispatch and batching
# ---------------------------------------------------------------------------------------------


def _is_pca(model: Any) -> bool:
    return hasattr(model, "transform") and hasattr(model, "inverse_transform")


def _check_model(model: Any) -> None:
    if _is_pca(model) or (hasattr(model, "encode") and hasattr(model, "decode")):
        return
    raise TypeError(
        f"cannot evaluate a {type(model).__name__}: expected a PCA (transform/inverse_transform) "
        "or an autoencoder/VAE (encode/decode)"
    )


def model_device(model: Any) -> torch.device:
    """The device a model computes on: that of its first parameter/buffer (or fitted tensor).

    Accepts an ``nn.Module``, a fitted PCA (its ``mean_``/``components_`` tensors) or a bound
    method of either (e.g. ``vae.decode``). Falls back to CPU when nothing tells.
    """
    owner = getattr(model, "__self__", model)  # a bound method: look at its object
    if isinstance(owner, nn.Module):
        for t in itertools.chain(owner.parameters(), owner.buffers()):
            return t.device
    for name in ("mean_", "components_"):
        t = getattr(owner, name, None)
        if isinstance(t, Tensor):
            return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Evaluate in eval mode (dropout/batch-norm off) and give the model back as it was."""
    owner = getattr(model, "__self__", model)
    if not isinstance(owner, nn.Module):
        yield
        return
    was_training = owner.training
    owner.eval()
    try:
        yield
    finally:
        owner.train(was_training)


def _map_batches(model: Any, fn: Callable[..., Tensor], x: Tensor, batch_size: int, name: str = "x", *,
                 y: Tensor | None = None) -> Tensor:
    """``fn`` applied to ``x`` batch by batch on the model's device; results concatenated on ``x.device``.
    With the class labels ``y: [N]`` of ``x`` (a conditional model), ``fn(x_batch, y_batch)``."""
    x = checks.images(name, x)
    checks.integer("batch_size", batch_size)
    if y is not None:
        y = models.check_labels(y, len(x))
    device = model_device(model)
    outs = []
    with torch.no_grad(), _eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            out = fn(xb) if y is None else fn(xb, y[start : start + batch_size].to(device))
            outs.append(out.to(x.device))
    return torch.cat(outs)


def _encode_batch(model: Any, xb: Tensor) -> Tensor:
    """The code of each image in a batch: ``xb [B, ...] -> [B, d]``. The one dispatch point."""
    if _is_pca(model):
        return model.transform(xb)
    z = model.encode(xb)
    # A VAE's encoder returns (mu, logvar); its deterministic code is the posterior mean.
    return z[0] if isinstance(z, (tuple, list)) else z


def _reconstruct_batch(model: Any, xb: Tensor) -> Tensor:
    """``xb [B, ...] -> x_hat`` with the shape of ``xb``."""
    z = _encode_batch(model, xb)
    # PCA: no clipping to [0, 1]. The unclipped x_hat is the orthogonal projection onto the
    # principal subspace, whose squared error is the sum of the discarded eigenvalues (Eckart-Young);
    # clipping would make PCA's error no longer the quantity the theory and the tests talk about.
    # Plots clip for display anyway (imshow with vmin=0, vmax=1).
    x_hat = model.inverse_transform(z) if _is_pca(model) else model.decode(z)
    return x_hat.reshape(xb.shape)


# ---------------------------------------------------------------------------------------------
# Codes and reconstructions
# ---------------------------------------------------------------------------------------------


def encode(model: Any, x: Tensor, batch_size: int = 1024, *, y: Tensor | None = None) -> Tensor:
    """Codes of ``x [N, 1, 28, 28]`` (or ``[N, D]`` for PCA): ``[N, d]``.

    PCA: ``transform``; autoencoder: ``encode``; VAE: the posterior mean ``mu``; a conditional VAE:
    the mean of q(z|x, y), given the labels ``y: [N]``.
    """
    _check_model(model)
    if y is not None:
        return _map_batches(model, lambda xb, yb: model.encode(xb, yb)[0], x, batch_size, y=y)
    return _map_batches(model, lambda xb: _encode_batch(model, xb), x, batch_size)


def decode(model: Any, z: Tensor, batch_size: int = 1024) -> Tensor:
    """Images decoded from codes ``z [N, d]``: ``[N, 1, 28, 28]`` (PCA: ``inverse_transform``, unclipped;
    ``[N, D]`` if it was not fitted on 28x28 images). VAE: the decoder's mean image."""
    _check_model(model)
    if _is_pca(model):
        def fn(zb: Tensor) -> Tensor:
            x_hat = model.inverse_transform(zb)
            return x_hat.reshape(-1, 1, 28, 28) if x_hat.shape[1] == 28 * 28 else x_hat
        return _map_batches(model, fn, z, batch_size, name="z")
    return _map_batches(model, model.decode, z, batch_size, name="z")


def decoder(model: Any) -> Callable[[Tensor], Tensor]:
    """``fn(z) -> images`` for codes ``z [N, d]`` on any device: the model's decoder (as :func:`decode`,
    or a function such as ``vae.decode``) run on the model's device, the images returned on the CPU.
    What :func:`latentbook.plots.manifold` and ``interpolation_strip`` draw."""
    if _is_pca(model) or (hasattr(model, "encode") and hasattr(model, "decode")):
        return lambda z: decode(model, z.to(model_device(model))).cpu()
    if not callable(model):
        raise TypeError(f"decoder needs a model or a function z -> images, got {type(model).__name__}")
    device = model_device(model)
    return lambda z: _map_batches(model, model, z.to(device), 1024, name="z").cpu()


def reconstruct(model: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Reconstructions of ``x [N, 1, 28, 28]``, same shape.

    PCA: ``inverse_transform(transform(x))`` (not clipped); autoencoder: ``decode(encode(x))``;
    VAE: ``decode(mu)``, the decoder's mean image at the posterior mean (no sampling).
    """
    _check_model(model)
    return _map_batches(model, lambda xb: _reconstruct_batch(model, xb), x, batch_size)


def per_sample_errors(model: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Squared reconstruction error per image, averaged over pixels: ``x [N, 1, 28, 28] -> [N]``."""
    _check_model(model)
    return _map_batches(model, lambda xb: losses.mse(_reconstruct_batch(model, xb), xb), x, batch_size)


def reconstruction_mse(model: Any, x: Tensor, batch_size: int = 1024) -> float:
    """Mean squared error per pixel over all of ``x [N, 1, 28, 28]`` (mean of :func:`per_sample_errors`)."""
    # Every image has the same number of pixels, so the mean of per-image means is the per-pixel mean.
    return per_sample_errors(model, x, batch_size).double().mean().item()


def psnr(x_hat: Tensor, x: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, MSE over all pixels.

    ``x_hat`` and ``x`` have the same shape (e.g. ``[N, 1, 28, 28]``); identical inputs give ``inf``.
    """
    if not isinstance(x_hat, Tensor) or not isinstance(x, Tensor):
        raise TypeError("psnr expects two tensors")
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} must have the same shape")
    if x.numel() == 0:
        raise ValueError("psnr of empty tensors is undefined")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    mse = (x_hat.double() - x.double().to(x_hat.device)).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def jacobian_norms(model: Any, x: Tensor, batch_size: int = 256) -> Tensor:
    """Frobenius norm of the encoder's Jacobian ``||∂z/∂x||_F`` at each image: ``x [N, 1, 28, 28] -> [N]``.

    Exact: one backward pass per code dimension and batch (d passes), so it suits evaluation; the
    contractive penalty in training uses ``models.jacobian_sq_estimate`` or a closed form instead.
    A one-sigmoid-layer encoder uses its closed form (``models.sigmoid_jacobian_sq``), which is the
    same number at the cost of a forward pass. The code is what :func:`encode` returns (a VAE's
    posterior mean).
    """
    _check_model(model)
    layer = None if _is_pca(model) else models.sigmoid_layer(model)
    if layer is not None:
        return _map_batches(model, lambda xb: models.sigmoid_jacobian_sq(layer.weight, model.encode(xb)).sqrt(),
                            x, batch_size)

    def fn(xb: Tensor) -> Tensor:
        with torch.enable_grad():
            x_in = xb.detach().requires_grad_(True)
            z = _encode_batch(model, x_in)
            sq = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
            for j in range(z.shape[1]):  # row j of every image's Jacobian at once
                (g,) = torch.autograd.grad(z[:, j].sum(), x_in, retain_graph=j < z.shape[1] - 1)
                sq += g.reshape(xb.shape[0], -1).double().pow(2).sum(1)
        return sq.sqrt().to(xb.dtype)

    return _map_batches(model, fn, x, batch_size)


def denoising_errors(
    model: Any, x: Tensor, kind: str, levels: Any, *, seed: int = 0, batch_size: int = 1024
) -> list[float]:
    """Per-pixel MSE between the clean ``x`` and the model's reconstruction of ``x`` corrupted by
    ``kind`` at each of ``levels`` -> one float per level.

    model: anything :func:`reconstruct` takes (autoencoder, VAE, PCA), or None for
    the error of the corrupted input itself (no denoising). At each level the corruption is drawn
    from a generator seeded with ``seed``, so every model sees the same noisy images and the errors
    compare pair by pair. PSNR in dB is ``-10 log10(mse)`` for images in [0, 1].
    """
    x = checks.images("x", x)
    errors = []
    for level in levels:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        noisy = noise.corrupt(x, {"kind": kind, "level": float(level)}, generator=gen)
        out = noisy if model is None else reconstruct(model, noisy, batch_size)
        errors.append((out.double() - x.double()).pow(2).mean().item())
    return errors


# ---------------------------------------------------------------------------------------------
# VAE: ELBO, importance-weighted log-likelihood, active units
# ---------------------------------------------------------------------------------------------


def _check_vae(vae: Any, needs: str) -> None:
    if not callable(getattr(vae, needs, None)):
        raise TypeError(f"expected a VAE with a .{needs}() method, got {type(vae).__name__}")


def test_elbo(vae: Any, x: Tensor, batch_size: int = 1024, seed: int = 0, *,
              y: Tensor | None = None) -> dict[str, float]:
    """Test-set means, in nats per image, of the VAE's ELBO and its two parts: ``{"elbo", "recon", "kl"}``.
    A conditional VAE needs the labels ``y: [N]`` (its ELBO then bounds log p(x|y)).

    ``x: [N, 1, 28, 28]``. ``recon = -E_q[log p(x|z)]`` (one reparameterised sample per image, drawn
    from a generator seeded with ``seed``, so repeated calls agree), ``kl = KL(q(z|x) || p(z))`` and
    ``elbo = -(recon + kl)``, whatever β the model was trained with.
    """
    _check_vae(vae, "loss")
    checks.integer("batch_size", batch_size)
    # The trainer's evaluation pass already averages every term of .loss over a data set, batch by batch.
    terms = train.evaluate_terms(vae, checks.images("x", x), batch_size=batch_size, seed=seed, y=y)
    missing = [k for k in ("elbo", "recon", "kl") if k not in terms]
    if missing:
        raise TypeError(f"{type(vae).__name__}.loss() reports {sorted(terms)}, not {missing}: is it a VAE?")
    return {k: terms[k] for k in ("elbo", "recon", "kl")}


test_elbo.__test__ = False  # a metric, not a test: keep pytest from collecting it where it is imported


def log_likelihood(vae: Any, x: Tensor, k: int = 5000, batch_size: int = 100, seed: int | None = 0) -> float:
    """Mean importance-weighted estimate of ``log p(x)`` in nats (Burda et al. 2015), ``x: [N, 1, 28, 28]``.

    Calls ``vae.log_likelihood(x_chunk, k) -> [B]`` on ``batch_size`` images at a time; the model
    draws the k samples in chunks itself, so memory does not grow with k. ``seed`` seeds the
    samples (``None``: torch's global generator).
    """
    _check_vae(vae, "log_likelihood")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (importance samples per image) must be a positive integer, got {k!r}")
    kwargs = {} if seed is None else {"generator": torch.Generator(model_device(vae)).manual_seed(seed)}
    ll = _map_batches(vae, lambda xb: vae.log_likelihood(xb, k, **kwargs), x, batch_size)
    return ll.double().mean().item()


def iwae_bounds(
    vae: Any, x: Tensor, ks: list[int], batch_size: int = 50, seed: int | None = 0, *,
    chunk_size: int = 128, cache: bool = False, cache_dir: Any = None,
) -> dict[int, Tensor]:
    """Importance-weighted bounds L_k for several k at once, per image: ``{k: [N]}`` nats, on the CPU.

    ``x: [N, 1, 28, 28]``. Draws ``K = max(ks)`` samples of q(z|x) per image once (``batch_size``
    images at a time, ``chunk_size`` samples per decoder pass, seeded by ``seed``) and splits them into
    ``K // k`` consecutive groups of k;
    each group's log-mean-exp weight is an unbiased estimate of L_k, and their mean is returned.
    Every k must divide K. ``ks = [1, ...]`` includes the one-sample ELBO estimate. Because the groups
    of a larger k are unions of the groups of a smaller one, the estimates are ordered, per image,
    whenever each k divides the next (Jensen's inequality), as the bounds themselves are on average.

    ``cache=True`` stores the result in the model cache (:func:`cached_result`), keyed by the
    model's weights, ``x`` and every argument: with k = 5,000 on a CPU this takes minutes once, and
    no time in class. Needs a seed (an unseeded result is not reproducible, so not cached).
    """
    _check_vae(vae, "encode")
    _check_vae(vae, "log_px_given_z")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    big = max(ks)
    if any(big % k for k in ks):
        raise ValueError(f"every k must divide the largest, {big}; got {sorted(ks)}")
    checks.images("x", x)
    checks.integer("batch_size", batch_size)
    if cache and seed is None:
        raise ValueError("cache=True needs a seed: an unseeded estimate is not reproducible")
    device = model_device(vae)

    def compute() -> dict[int, Tensor]:
        gen = torch.Generator(device).manual_seed(seed) if seed is not None else None
        parts = []
        with torch.no_grad(), _eval_mode(vae):
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                parts.append(montecarlo.log_weights(vae.encode, vae.log_px_given_z, xb, big, chunk_size=chunk_size,
                                                    generator=gen).cpu())
        log_w = torch.cat(parts, dim=1).double()  # [K, N]
        return {k: montecarlo.grouped_log_mean_exp(log_w, k).mean(0).float() for k in ks}

    if not cache:
        return compute()
    params = {"ks": sorted(set(ks)), "batch_size": batch_size, "seed": seed, "device": device.type}
    if chunk_size != 128:  # absent at the default, so that earlier stored results keep their keys
        params["chunk_size"] = chunk_size
    found = cached_result("iwae_bounds", vae, x, params, lambda: {str(k): v for k, v in compute().items()},
                          cache_dir=cache_dir)
    return {k: found[str(k)] for k in ks}


# ---------------------------------------------------------------------------------------------
# Results cache: expensive evaluations of cached models, stored beside them
# ---------------------------------------------------------------------------------------------


def cached_result(name: str, model: nn.Module, x: Tensor, params: dict[str, Any],
                  compute: Callable[[], dict[str, Tensor]], *, cache_dir: Any = None) -> dict[str, Tensor]:
    """``compute()`` (a dict of tensors), computed once for this model's weights, ``x`` and ``params``,
    then read from the store (local, or fetched from the published book).

    The key is the evaluation's ``name`` and ``params``, the checksums of the weights and of ``x``,
    and the version numbers of this module and :mod:`latentbook.montecarlo`.
    """
    config = {
        "kind": "result",
        "about": f"{name} of a {type(model).__name__} on {int(x.shape[0])} images",
        "result": name,
        "params": params,
        "weights": store.checksum(model.state_dict()),
        "inputs": store.checksum({"x": x}),
        "n_images": int(x.shape[0]),
        "versions": {"evaluate": VERSION, "montecarlo": montecarlo.VERSION},
    }
    entry = store.get(config, folder_=cache_dir)
    if entry is None:
        entry = store.put(config, compute(), folder_=cache_dir)
    return entry.tensors


def active_units(vae: Any, x: Tensor, threshold: float = 0.01, batch_size: int = 1024) -> tuple[int, Tensor]:
    """Active latent units (Burda et al. 2015): dimension u is active if ``Cov_x(E_q[z_u | x]) > threshold``.

    ``x: [N, 1, 28, 28]`` with ``N >= 2``. Returns ``(count, variance [d])``, the variance over
    ``x`` of each dimension of the posterior mean (unbiased estimate), on CPU.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if x.shape[0] < 2:
        raise ValueError(f"active_units needs at least 2 images to estimate a variance, got {x.shape[0]}")
    mu = encode(vae, x, batch_size).double().cpu()
    var = mu.var(dim=0)
    return int((var > threshold).sum()), var.float()


def kl_per_dimension(vae: Any, x: Tensor, batch_size: int = 1024, *, y: Tensor | None = None) -> Tensor:
    """Mean over ``x [N, 1, 28, 28]`` of each latent dimension's KL(q(z_j|x) || N(0, 1)), in nats: ``[d]`` on CPU.

    ``½ (mu_j² + σ_j² - log σ_j² - 1)`` averaged over the images; the entries sum to the mean KL term of
    the ELBO. A collapsed dimension (q(z_j|x) = the prior for every x) has a KL of 0. A conditional VAE
    needs the labels ``y: [N]`` (q(z_j|x, y)).
    """
    _check_vae(vae, "encode")

    def fn(xb: Tensor, *yb: Tensor) -> Tensor:
        mu, logvar = vae.encode(xb, *yb)
        return 0.5 * (mu**2 + logvar.exp() - logvar - 1)

    return _map_batches(vae, fn, x, batch_size, y=y).double().mean(0).float().cpu()


# ---------------------------------------------------------------------------------------------
# Judging generated images with a classifier (chapters "vae" and "side by side")
# ---------------------------------------------------------------------------------------------


def class_probabilities(classifier: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Softmax of a classifier's logits: ``x [N, 1, 28, 28] -> [N, C]``, rows summing to 1.

    ``classifier(x_batch) -> logits [B, C]`` (e.g. :class:`latentbook.classifier.DigitClassifier`),
    run batch by batch on its device in eval mode; the result is on ``x``'s device.
    """
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be an nn.Module returning logits [B, C], got {type(classifier).__name__}")
    return _map_batches(classifier, lambda xb: torch.softmax(classifier(xb).float(), dim=1), x, batch_size)


def classifier_confidence(classifier: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Each image's top-class probability ``max_c p(c | x)``: ``x [N, 1, 28, 28] -> [N]`` in [1/C, 1].

    Near 1 for an image the classifier reads as one clear class; near 1/C when it cannot tell. Applied
    to generated images it measures how recognisable they are (the mean is a one-number summary).
    """
    return class_probabilities(classifier, x, batch_size).max(dim=1).values


# ---------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _balanced_subset(y: np.ndarray, n_labels: int, seed: int) -> np.ndarray:
    """Indices of ``n_labels`` examples, as equal a share per class as possible (the remainder goes to
    randomly chosen classes), drawn without replacement with ``seed``."""
    classes = np.unique(y)
    if n_labels < len(classes):
        raise ValueError(f"n_labels={n_labels} is fewer than the {len(classes)} classes; need >= 1 per class")
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), n_labels // len(classes))
    per_class[rng.choice(len(classes), n_labels % len(classes), replace=False)] += 1
    picked = []
    for c, m in zip(classes, per_class):
        idx = np.flatnonzero(y == c)
        if m > len(idx):
            raise ValueError(f"n_labels={n_labels} asks for {m} examples of class {c} but there are only {len(idx)}")
        picked.append(rng.choice(idx, m, replace=False))
    return np.sort(np.concatenate(picked))


def linear_probe(
    codes_train: Any,
    y_train: Any,
    codes_test: Any,
    y_test: Any,
    n_labels: int | None = None,
    seed: int = 0,
    max_iter: int = 5000,
) -> float:
    """Test accuracy of a logistic-regression classifier on standardised codes.

    ``codes_*: [N, d]`` (tensors or arrays; images are flattened), ``y_*: [N]`` integer labels.
    With ``n_labels``, it trains on a class-balanced random subset of that many training codes
    (seeded by ``seed``) to measure how useful a code is when labels are scarce.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte, ytr, yte = (_to_numpy(a) for a in (codes_train, codes_test, y_train, y_test))
    Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float64)
    Xte = Xte.reshape(len(Xte), -1).astype(np.float64)
    if Xtr.shape[1] != Xte.shape[1]:
        raise ValueError(f"train codes have {Xtr.shape[1]} features but test codes have {Xte.shape[1]}")
    if len(Xtr) != len(ytr) or len(Xte) != len(yte):
        raise ValueError(
            f"codes and labels differ in length: train {len(Xtr)} vs {len(ytr)}, test {len(Xte)} vs {len(yte)}"
        )
    if len(Xte) == 0:
        raise ValueError("the test set is empty")
    if n_labels is not None:
        idx = _balanced_subset(ytr, int(n_labels), seed)
        Xtr, ytr = Xtr[idx], ytr[idx]
    if len(np.unique(ytr)) < 2:
        raise ValueError("the training labels hold a single class; a classifier needs at least two")
    # Standardised features keep lbfgs well conditioned; scikit-learn warns if max_iter is too few.
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(Xtr, ytr)
    return float((clf.predict(Xte) == yte).mean())


# ---------------------------------------------------------------------------------------------
# Anomaly detection
# ---------------------------------------------------------------------------------------------


def anomaly_scores(model: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Anomaly score of each image: its reconstruction error (:func:`per_sample_errors`), ``[N]``."""
    return per_sample_errors(model, x, batch_size)


def _scores(a: Any, name: str) -> np.ndarray:
    s = _to_numpy(a).astype(np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return s


def threshold_at_percentile(normal_scores: Any, q: float = 95) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of scores on normal data, ``[N] -> float``.

    Flagging scores above it marks about ``100 - q`` % of normal data as anomalous.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q is a percentile and must lie in [0, 100], got {q}")
    return float(np.percentile(_scores(normal_scores, "normal_scores"), q))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the average of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first copy
    return (first + (counts + 1) / 2.0)[inverse]


def roc_auc(scores_normal: Any, scores_anomalous: Any) -> float:
    """Area under the ROC curve for "higher score = anomalous", ``[N0], [N1] -> float``.

    Mann-Whitney: AUC = P(score_anomalous > score_normal) + P(tie) / 2, computed from the rank
    sum of the anomalous scores among all scores (ties get average ranks).
    """
    s0, s1 = _scores(scores_normal, "scores_normal"), _scores(scores_anomalous, "scores_anomalous")
    ranks = _average_ranks(np.concatenate([s0, s1]))
    n0, n1 = len(s0), len(s1)
    u = ranks[n0:].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n0 * n1))


def detection_report(scores_normal: Any, scores_anomalous: Any, threshold: float) -> dict[str, float]:
    """Flag ``score > threshold`` as anomalous; anomalies are the positive class.

    ``scores_normal: [N0]``, ``scores_anomalous: [N1]``. Returns ``precision``, ``recall``, ``f1``
    (0 where undefined, as scikit-learn reports it), the threshold-free ``roc_auc`` and ``threshold``.
    """
    s0, s1 = _scores(scores_normal, "scores_normal"), _scores(scores_anomalous, "scores_anomalous")
    tp = int((s1 > threshold).sum())
    fp = int((s0 > threshold).sum())
    fn = len(s1) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(s0, s1),
        "threshold": float(threshold),
    }


# ---------------------------------------------------------------------------------------------
# Latent traversals: what one latent dimension does to the image (chapter "conditional-vae")
# ---------------------------------------------------------------------------------------------


def latent_traversal(model: Any, z0: Tensor, dims: Any, values: Any) -> Tensor:
    """The decoded mean images of ``z0`` with one coordinate at a time swept over ``values``.

    ``z0: [d]`` a code; ``dims``: the latent dimensions to sweep (ints); ``values``: the ``S`` values each is
    set to (the other coordinates stay at ``z0``). Returns ``[len(dims), S, 1, 28, 28]`` on the CPU: row
    ``i``, column ``s`` is ``decode(z0 with z_{dims[i]} = values[s])``.
    """
    _check_model(model)
    if not isinstance(z0, Tensor) or z0.ndim != 1:
        got = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__
        raise ValueError(f"z0 must be one code [d], got {got}")
    dims = [checks.integer("each of dims", j, minimum=0) for j in dims] if not isinstance(dims, Tensor) \
        else [int(j) for j in dims.tolist()]
    if not dims or max(dims) >= len(z0) or min(dims) < 0:
        raise ValueError(f"dims must be latent dimensions 0..{len(z0) - 1}, got {dims}")
    values = torch.as_tensor(values, dtype=z0.dtype).flatten()
    if len(values) == 0:
        raise ValueError("values is empty")
    z = z0.detach().cpu().repeat(len(dims), len(values), 1)  # [R, S, d]
    for i, j in enumerate(dims):
        z[i, :, j] = values
    images = decode(model, z.reshape(-1, len(z0)).to(model_device(model))).cpu()
    return images.reshape(len(dims), len(values), *images.shape[1:])


def traversal_change(images: Tensor) -> Tensor:
    """How much each traversal changes the image: ``images [R, S, ...]`` (R traversals of S steps, as from
    :func:`latent_traversal`) -> ``[R]``, the mean over the S - 1 steps of the mean absolute pixel change
    between consecutive images."""
    if not isinstance(images, Tensor) or images.ndim < 3 or images.shape[1] < 2:
        raise ValueError("images must be [R, S, ...] with S >= 2 steps per traversal, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    steps = (images[:, 1:] - images[:, :-1]).abs()  # [R, S - 1, ...]
    return steps.flatten(2).mean(2).mean(1)


def code_probe(model: Any, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *,
               conditional: bool = False, seed: int = 0, cache: bool = False) -> float:
    """:func:`linear_probe` accuracy of the class from ``model``'s codes (its posterior means, :func:`encode`):
    trained on the codes of ``x_train [N, 1, 28, 28]`` with labels ``y_train [N]``, scored on ``x_test``.

    ``conditional``: the model is a conditional VAE, encoded with the true labels (``q(z|x, y)``).
    ``cache``: keep the result in the store (:func:`cached_result`, keyed by the weights and both image sets):
    a logistic regression on tens of thousands of codes takes tens of seconds on a CPU.
    """
    def compute() -> dict[str, Tensor]:
        codes_tr = encode(model, x_train, y=y_train if conditional else None)
        codes_te = encode(model, x_test, y=y_test if conditional else None)
        return {"accuracy": torch.tensor(linear_probe(codes_tr, y_train, codes_te, y_test, seed=seed))}

    if not cache:
        return float(compute()["accuracy"])
    params = {"conditional": bool(conditional), "seed": seed,
              "train": store.checksum({"x": x_train.cpu(), "y": y_train.cpu()}),
              "labels": store.checksum({"y": y_test.cpu()})}
    return float(cached_result("code_probe", model, x_test.cpu(), params, compute)["accuracy"])

"""Chapter "applications": models trained without a class (anomaly detection), the anomaly pipeline it
uses against scikit-learn, and PSNR from the denoising curves."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from latentbook import data, evaluate, models as M, noise, store, train as T, zoo

BASE = dict(dataset="mnist", n_train=256, epochs=1, batch_size=64, lr=1e-3, seed=0,
            loss_kwargs=None, binarize=None, kl_warmup_epochs=0)
TINY = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [8]}


def test_exclude_classes_enter_the_cache_key():
    key = lambda **kw: store.key_of(T.model_config(TINY, **{**BASE, **kw}))  # noqa: E731
    keys = {key(), key(exclude_classes=[8]), key(exclude_classes=[2]), key(exclude_classes=[2, 8])}
    assert len(keys) == 4
    assert key(exclude_classes=[8, 2, 8]) == key(exclude_classes=[2, 8])  # a set of classes
    assert T.model_config(TINY, **BASE, exclude_classes=(8,))["data"]["exclude_classes"] == [8]
    for bad in ([], [10], [-1], ["8"], [True], list(range(10)), 8):
        with pytest.raises(ValueError, match="exclude_classes"):
            key(exclude_classes=bad)


def test_train_cached_leaves_the_class_out(tmp_path, monkeypatch):
    seen = []
    real_fit = T.fit

    def spy(model, x, **kw):
        seen.append(x.clone())
        return real_fit(model, x, **kw)

    monkeypatch.setattr(T, "fit", spy)
    run = dict(BASE, device="cpu", progress=False, cache_dir=tmp_path)
    T.train_cached(TINY, exclude_classes=[8], **run)
    x, y = data.load("mnist", "train", n=256)
    assert torch.equal(seen[0], x[y != 8])
    assert len(seen[0]) < 256
    T.train_cached(TINY, exclude_classes=[8], **run)  # cached: no second training
    T.train_cached(TINY, **run)  # without exclusion: another entry, all images
    assert len(seen) == 2 and torch.equal(seen[1], x)


def test_anomaly_recipe_is_ae32_without_one_class():
    r, plain = zoo.recipe("ae-32-no8"), zoo.recipe("ae-32")
    assert r.exclude_classes == (8,)
    assert (r.spec, r.epochs, r.batch_size, r.lr, r.loss_kwargs) == (
        plain.spec, plain.epochs, plain.batch_size, plain.lr, plain.loss_kwargs)


def test_percentile_threshold_pipeline_against_sklearn():
    """The chapter's recipe: threshold from calibration scores, report on fresh normal and anomalous scores."""
    rng = np.random.default_rng(0)
    calibration, normal = rng.lognormal(0, 0.5, 4000), rng.lognormal(0, 0.5, 4000)
    anomalous = rng.lognormal(1, 0.5, 500)
    t = evaluate.threshold_at_percentile(calibration, 95)
    assert np.mean(calibration > t) == pytest.approx(0.05, abs=1e-3)
    # new normal data are flagged at about the calibrated rate (binomial tolerance)
    assert abs(np.mean(normal > t) - 0.05) < 4 * math.sqrt(0.05 * 0.95 / 4000) + 0.01
    r = evaluate.detection_report(normal, anomalous, t)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    scores = np.r_[normal, anomalous]
    assert r["precision"] == pytest.approx(precision_score(labels, scores > t))
    assert r["recall"] == pytest.approx(recall_score(labels, scores > t))
    assert r["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    # the AUC of two shifted log-normals is Phi(shift / (sigma sqrt 2))
    phi = 0.5 * (1 + math.erf(1 / (0.5 * math.sqrt(2)) / math.sqrt(2)))
    assert r["roc_auc"] == pytest.approx(phi, abs=0.02)


def test_psnr_from_the_denoising_curve_equals_evaluate_psnr():
    torch.manual_seed(0)
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    ae = M.MLPAutoencoder(latent_dim=4, hidden=(16,))
    (mse,) = evaluate.denoising_errors(ae, x, "gaussian", [0.3], seed=5)
    noisy = noise.gaussian(x, 0.3, generator=torch.Generator().manual_seed(5))
    psnr = evaluate.psnr(evaluate.reconstruct(ae, noisy), x)
    assert -10 * math.log10(mse) == pytest.approx(psnr, abs=1e-4)
    (mse_in,) = evaluate.denoising_errors(None, x, "gaussian", [0.3], seed=5)
    assert -10 * math.log10(mse_in) == pytest.approx(evaluate.psnr(noisy, x), abs=1e-4)

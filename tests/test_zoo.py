"""The book's models by name (latentbook.zoo): recipes in words, which chapters use which model, and training
them several at a time (warm --jobs, build's first step)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from latentbook import build, store, zoo
from latentbook.chapter import start

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path))
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "off")
    return tmp_path


def test_describe_says_what_the_recipe_does():
    full, smoke = start("full", "cpu", quiet=True), start("smoke", "cpu", quiet=True)
    assert zoo.describe("vae-32-beta4", full) == ("6 epochs of 60,000 images, batch 128, Adam with a one-cycle "
                                                 "learning rate peaking at 0.003")
    assert zoo.describe("ae-2", full) == "20 epochs of 60,000 images, batch 256, Adam at a constant learning rate of 0.001"
    assert zoo.describe("ae-2", smoke).startswith(f"{smoke.mode.max_epochs} epochs of {smoke.mode.n_train:,} images")


def test_every_recipe_has_its_own_store_entry():
    run = start("full", "cpu", quiet=True)
    assert len({store.key_of(zoo.config(n, run)) for n in zoo.RECIPES}) == len(zoo.RECIPES)


def test_every_model_names_the_chapters_that_use_it():
    stems = build.chapters(ROOT)
    assert set(zoo.CHAPTERS) == set(zoo.RECIPES)
    for name, chapters in zoo.CHAPTERS.items():
        assert chapters and set(chapters) <= set(stems), name
        assert list(chapters) == sorted(chapters, key=stems.index), f"{name}: in book order"
    assert zoo.models_for(["pca", "elbo"]) == []
    assert set(zoo.models_for(["applications"])) == {"ae-32", "dae-gaussian-32", "ae-32-no8"}


def test_default_jobs(monkeypatch):
    for cores, jobs in ((1, 1), (2, 2), (4, 2), (16, 8)):
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        assert zoo.default_jobs(torch.device("cpu")) == jobs
    assert zoo.default_jobs(torch.device("cuda")) == 1


def test_training_cost_orders_the_longest_first():
    run = start("full", "cpu", quiet=True)
    cost = {n: zoo._training_flops(n, run) for n in ("ae-32", "vae-32-beta4", "conv-ae-8", "linear-ae-6")}
    # as measured on a 2-core CPU: ae-32 65 s, conv-ae-8 ~33 s (3 epochs of ~11 s), a 6-epoch β-VAE ~21 s,
    # linear-ae-6 ~10 s
    assert cost["ae-32"] > cost["conv-ae-8"] > cost["vae-32-beta4"] > cost["linear-ae-6"] > 0


def test_parallel_warm_stores_what_serial_training_would(empty_store):
    """Models trained in two worker processes (one thread each on two cores) are the models the chapters would
    train one after the other: same keys, same weights (one thread each way, so bit for bit); the VAE's stored
    bounds are computed after the VAE is trained, not before."""
    run = start("smoke", "cpu", quiet=True)
    names = ["linear-ae-6", "conv-ae-8", "vae-2"]
    lines = []
    zoo.warm(run, names, log=lines.append, jobs=2)
    stored = {e["key"] for e in store.info(empty_store).entries if e["config"]["kind"] == "model"}
    assert stored == {store.key_of(zoo.config(n, run)) for n in names}
    assert [e["config"]["kind"] for e in store.info(empty_store).entries].count("result") == 1
    trained = next(i for i, line in enumerate(lines) if re.fullmatch(r"vae-2: \d+ s", line))
    bounds = next(i for i, line in enumerate(lines) if line.startswith("vae-2: importance-weighted bounds"))
    assert trained < bounds
    names = names[:2]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))  # as each worker
    try:
        for name in names:
            parallel, _ = zoo.get(name, run)
            serial, _ = zoo.get(name, run, retrain=True, progress=False)
            for (k, a), b in zip(parallel.state_dict().items(), serial.state_dict().values()):
                assert torch.equal(a, b), (name, k)
    finally:
        torch.set_num_threads(threads)


def test_warm_refuses_an_unknown_model_before_any_work(empty_store):
    run = start("smoke", "cpu", quiet=True)
    with pytest.raises(ValueError, match="no model called 'vae-3'"):
        zoo.warm(run, ["linear-ae-6", "vae-3"], log=lambda *a: None, jobs=2)
    assert store.info(empty_store).entries == []
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        zoo.warm(run, ["linear-ae-6"], log=lambda *a: None, jobs=0)


def test_build_trains_the_models_of_due_chapters_first(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(zoo, "warm", lambda run, **kw: calls.append((run.mode.name, kw)))
    params = {**build.DEFAULT_PARAMS, "MODE": "full", "DEVICE": "cpu"}
    runs = build.pretrain(ROOT, params, tmp_path, only=["pca", "applications"], force=False, jobs=2)
    assert calls == [("full", {"chapters": ["pca", "applications"], "jobs": 2, "log": print})]
    assert [r.status for r in runs] == ["trained"]
    calls.clear()
    assert build.pretrain(ROOT, params, tmp_path, only=["pca", "elbo"], force=False, jobs=2) == []  # no models
    assert build.pretrain(ROOT, params, tmp_path, only=None, force=False, jobs=1) == []
    smoke = {**params, "MODE": "smoke"}
    assert build.pretrain(ROOT, smoke, tmp_path, only=None, force=False, jobs=None) == []  # seconds each: serial
    assert calls == []



def test_a_task_waiting_for_a_missing_task_is_an_error_not_a_hang():
    run = start("smoke", "cpu", quiet=True)
    with pytest.raises(RuntimeError, match="wait for tasks that are not in the list"):
        zoo._in_parallel(run, [("bounds", "no-such-model", zoo.ddpm_bound)], 2, log=lambda *a: None)


def test_warm_for_chapters_without_models_trains_nothing(empty_store):
    run = start("smoke", "cpu", quiet=True)
    zoo.warm(run, chapters=["pca", "elbo"], log=lambda *a: None, jobs=2)
    assert store.info(empty_store).entries == []

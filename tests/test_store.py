"""The store: keys from meaning (a comment changes none, a forgotten version bump is caught), entries that
survive faults (interrupted writes, two writers, a full disk, damaged or older files), listing and
clearing, and fetching published entries by checksum from a local web server."""

from __future__ import annotations

import ast
import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import edited_package_copy
from latentbook import build, classifier, data, losses, models as M, noise, store, train as T, zoo

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "latentbook"
GOLDEN = Path(__file__).with_name("golden_weights.json")
TINY = {"arch": "mlp_ae", "latent_dim": 2, "hidden": [32]}
CACHE_RUN = dict(n_train=256, epochs=1, batch_size=64, device="cpu", progress=False)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts calls of train.fit (still training for real)."""
    calls = []
    real_fit = T.fit

    def counting_fit(*args, **kwargs):
        calls.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(T, "fit", counting_fit)
    return calls


@pytest.fixture(autouse=True)
def nothing_published(monkeypatch):
    """No test fetches unless it serves its own published folder."""
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "off")
    store._MANIFESTS.clear()


# ---------------------------------------------------------------------------------------------
# Entries: round trip, damage, faults
# ---------------------------------------------------------------------------------------------


def test_cached_model_reloads_bit_identical_without_training(tmp_path, fit_calls):
    rng_before = torch.get_rng_state()
    m1, h1 = T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's random stream is untouched
    m2, h2 = T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert len(fit_calls) == 1
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert _same(_weights(m1), _weights(m2)) and h1 == h2 and not m2.training
    # {"arch": "mlp_ae", ...} and its spelled-out defaults are the same model: same entry
    T.train_cached({**TINY, "output": "sigmoid"}, cache_dir=tmp_path, **CACHE_RUN)
    assert len(fit_calls) == 1
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.startswith(".")) == [".json", ".pt"]
    T.train_cached(TINY, cache_dir=tmp_path, retrain=True, **CACHE_RUN)
    assert len(fit_calls) == 2

    listed = store.info(tmp_path)
    (entry,) = listed.entries
    assert entry["config"]["spec"]["hidden"] == [32] and entry["meta"]["torch"] == str(torch.__version__)
    assert "torch" not in json.dumps(entry["config"])  # metadata, never part of the key
    assert "mlp_ae(hidden=[32]" in str(listed) and listed.total_bytes == (tmp_path / f"{entry['key']}.pt").stat().st_size


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper", "older"])
def test_damaged_or_older_entry_is_detected_and_retrained(tmp_path, fit_calls, damage):
    m1, _ = T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    (entry,) = tmp_path.glob("*.pt")
    blob = entry.read_bytes()
    saved = torch.load(entry, weights_only=True)
    if damage == "truncate":
        entry.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        entry.write_bytes(os.urandom(len(blob)))
    elif damage == "tamper":  # a valid file with changed weights: only the checksum notices
        next(iter(saved["tensors"].values()))[0, 0] += 1.0
        torch.save(saved, entry)
    else:  # the layout of latentbook before the store (format 1) under this key
        torch.save({"config": saved["config"], "state_dict": saved["tensors"], "history": saved["info"]["history"],
                    "checksum": "x"}, entry)
    reason = {"truncate": "unreadable", "garbage": "unreadable", "tamper": "checksum mismatch",
              "older": r"written by another version of latentbook \(entry format 1"}[damage]
    with pytest.warns(RuntimeWarning, match=rf"stored .* is unusable: {reason}.*; making it again") as record:
        m2, _ = T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    ours = [w for w in record if str(w.message).startswith("latentbook:")]  # torch may warn about garbage too
    assert len(ours) == 1 and "\n" not in str(ours[0].message)
    assert len(fit_calls) == 2 and _same(_weights(m1), _weights(m2))  # training is deterministic
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is healthy again
        T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert len(fit_calls) == 2


def test_interrupted_write_leaves_no_partial_file(tmp_path, fit_calls, monkeypatch):
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half an entry")
        raise KeyboardInterrupt  # e.g. the instructor stops the cell mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    monkeypatch.setattr(torch, "save", real_save)
    T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert len(fit_calls) == 2  # the interrupted run stored nothing; the next one did


def test_a_full_disk_costs_the_entry_not_the_model(tmp_path, fit_calls, monkeypatch):
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"the first blocks")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(RuntimeWarning, match=r"could not store .*No space left on device.*it is not kept"):
        model, history = T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert history.epochs == 1 and not model.training
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # no half entry, no temporary file
    monkeypatch.setattr(torch, "save", real_save)
    again, _ = T.train_cached(TINY, cache_dir=tmp_path, **CACHE_RUN)
    assert len(fit_calls) == 2 and _same(_weights(model), _weights(again))


def _writer(folder: str, value: float, rounds: int) -> None:
    config = {"kind": "result", "result": "concurrency test"}
    for _ in range(rounds):
        store.put(config, {"v": torch.full((50_000,), value)}, {"value": value}, folder_=folder)


def test_two_processes_writing_one_entry_leave_a_whole_one(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), v, 15)) for v in (1.0, 2.0)]
    for w in writers:
        w.start()
    config = {"kind": "result", "result": "concurrency test"}
    seen = set()
    while any(w.is_alive() for w in writers):
        entry = store.get(config, folder_=tmp_path, fetch=False)  # never half a file, never a mixed one
        if entry is not None:
            v = entry.info["value"]
            assert torch.all(entry.tensors["v"] == v)
            seen.add(v)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    final = store.get(config, folder_=tmp_path, fetch=False)
    description = json.loads((tmp_path / f"{final.key}.json").read_text())
    assert description["checksum"] == final.checksum  # the .pt and its description come from one writer
    assert not list(tmp_path.glob(".*.tmp*"))


def test_atomic_write_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_bytes(target, b"new content")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file"]


def test_folder_info_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path / "env"))
    assert store.folder() == tmp_path / "env"
    assert store.folder(tmp_path / "arg") == tmp_path / "arg"
    T.train_cached(TINY, **CACHE_RUN)  # goes to $LATENTBOOK_MODELS
    (tmp_path / "env" / "notes.txt").write_text("not ours")
    (tmp_path / "env" / ".0123456789abcdef.pt.x1.tmp").write_bytes(b"left over by a killed process")
    listed = store.info()
    assert len(listed.entries) == 1
    description = json.loads((tmp_path / "env" / f"{listed.entries[0]['key']}.json").read_text())
    assert description["config"]["data"]["n"] == 256 and description["meta"]["train_seconds"] >= 0
    removed = store.clear()
    assert len(removed.entries) == 1 and str(removed).startswith("removed 1 stored entry")
    assert sorted(p.name for p in (tmp_path / "env").iterdir()) == [".lock", "notes.txt"]
    assert store.info().entries == []


# ---------------------------------------------------------------------------------------------
# Keys from meaning
# ---------------------------------------------------------------------------------------------


def test_every_part_of_the_configuration_changes_the_key(monkeypatch):
    base = dict(dataset="mnist", n_train=256, epochs=1, batch_size=64, lr=1e-3, seed=0,
                loss_kwargs=None, binarize=None, kl_warmup_epochs=0)
    changes = dict(dataset="fashion-mnist", n_train=512, epochs=2, batch_size=32, lr=2e-3, seed=1,
                   loss_kwargs={"recon_loss": "mse"}, binarize="dynamic", kl_warmup_epochs=1,
                   corruption={"kind": "gaussian", "level": 0.5}, exclude_classes=[8])
    key = lambda spec=TINY, **kw: store.key_of(T.model_config(spec, **{**base, **kw}))  # noqa: E731
    keys = {"base": key()}
    for name, value in changes.items():
        keys[name] = key(**{name: value})
    keys["spec"] = key({**TINY, "latent_dim": 3})
    for name, owner in (("trainer", T), ("losses", losses), ("data", data)):
        with monkeypatch.context() as m:
            m.setattr(owner, "VERSION", owner.VERSION + 1)
            keys[f"{name} version"] = key()
    for cls in (M.MLPAutoencoder, M.Autoencoder):  # a base class's version reaches its subclasses
        with monkeypatch.context() as m:
            m.setattr(cls, "version", cls.version + 1)
            keys[f"{cls.__name__} version"] = key()
    with monkeypatch.context() as m:
        m.setattr(noise, "VERSION", noise.VERSION + 1)
        assert key(corruption=changes["corruption"]) != keys["corruption"]
        assert key() == keys["base"]  # noise's version matters to denoising models only
    with monkeypatch.context() as m:
        m.setattr(data, "_DATASETS", {**data._DATASETS, "mnist": data._Dataset("MNIST", "MNIST", {
            **data._DATASETS["mnist"].md5, "train-images-idx3-ubyte": "0" * 32})})
        keys["dataset checksum"] = key()
    assert len(set(keys.values())) == len(keys), keys
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in keys.values())
    with pytest.raises(ValueError, match="JSON-able"):
        key(loss_kwargs={"beta": object()})


KEYS_SCRIPT = """
import json, sys
from latentbook import store, train, zoo, chapter
run = chapter.start("full", "cpu", "mnist", 0, quiet=True)
keys = {name: store.key_of(zoo.config(name, run)) for name in zoo.RECIPES}
print(json.dumps(keys))
"""


def test_comments_and_docstrings_change_no_key_and_no_chapter(tmp_path):
    copy = edited_package_copy(tmp_path)

    def keys(where: Path) -> dict:
        out = subprocess.run([sys.executable, "-c", KEYS_SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(where)}, check=True).stdout
        return json.loads(out)

    original, edited = keys(PACKAGE.parent), keys(copy.parent)
    assert len(original) == len(zoo.RECIPES) and edited == original
    # the chapters' keys: every module means the same, so no chapter executes again
    for path in sorted(PACKAGE.glob("*.py")):
        name = "latentbook" if path.stem == "__init__" else f"latentbook.{path.stem}"
        assert build.module_fingerprint(name, package_dir=copy) == build.module_fingerprint(name), name
    # ...while a change of meaning is seen
    (copy / "losses.py").write_text((copy / "losses.py").read_text().replace("LOG_2PI = math.log(2 * math.pi)",
                                                                             "LOG_2PI = math.log(2 * math.pi) + 0"))
    assert build.module_fingerprint("latentbook.losses", package_dir=copy) != build.module_fingerprint("latentbook.losses")


# ---------------------------------------------------------------------------------------------
# Golden weights: a change that alters trained weights must come with a version bump
# ---------------------------------------------------------------------------------------------

GOLDEN_CASES = {
    "MLPAutoencoder": ({"arch": "mlp_ae", "latent_dim": 2, "hidden": [16]}, {}),
    "MLPAutoencoder+penalties": ({"arch": "mlp_ae", "latent_dim": 4, "hidden": [], "code_activation": "sigmoid"},
                                 {"loss_kwargs": {"penalties": {"l1": 0.1, "kl_sparsity": {"weight": 1.0, "rho": 0.05},
                                                                "contractive": 0.1}}}),
    "MLPAutoencoder+noise": ({"arch": "mlp_ae", "latent_dim": 2, "hidden": [16]},
                             {"corruption": {"kind": "salt_and_pepper", "level": 0.2}}),
    "LinearAutoencoder": ({"arch": "linear_ae", "latent_dim": 3}, {}),
    "ConvAutoencoder": ({"arch": "conv_ae", "latent_dim": 4, "channels": [4, 8]}, {}),
    "VAE": ({"arch": "vae", "latent_dim": 2, "hidden": [16]}, {"binarize": "dynamic", "kl_warmup_epochs": 1}),
    "VAE conv": ({"arch": "vae", "latent_dim": 2, "encoder": "conv", "channels": [4, 8]}, {"loss_kwargs": {"beta": 2.0}}),
    "VAE gaussian": ({"arch": "vae", "latent_dim": 2, "hidden": [16], "likelihood": "gaussian"},
                     {"loss_kwargs": {"free_bits": 0.1}}),
    "DigitClassifier": ({"arch": "digit_classifier", "channels": [4, 8], "hidden": 16}, {"blend": 0.5, "noise": 0.25}),
    "ConditionalVAE": ({"arch": "cvae", "latent_dim": 2, "hidden": [16]}, {"binarize": "dynamic"}),
    "VQVAE": ({"arch": "vq_vae", "n_codes": 2, "codebook_size": 4, "code_dim": 3, "hidden": [16]}, {}),
    "VQVAE kmeans restarts": ({"arch": "vq_vae", "n_codes": 2, "codebook_size": 4, "code_dim": 3, "hidden": [16],
                               "init": "kmeans", "restarts": True}, {"binarize": "dynamic"}),
    "DDPM": ({"arch": "ddpm", "hidden": [16], "time_dim": 8, "T": 20}, {"binarize": "dynamic"}),
}


def test_every_architecture_of_the_book_has_golden_weights():
    archs = {spec["arch"] for spec, _ in GOLDEN_CASES.values()}
    assert set(M.ARCHS) | {"digit_classifier"} == archs  # zoo imports every module that registers one


def _golden(case: str) -> tuple[dict, str]:
    """(versions, hash) of two training steps of ``case`` on a fixed batch, in float64 and rounded to
    8 significant digits, so that the hash is the same on any CPU."""
    spec, options = GOLDEN_CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    if spec["arch"] == "digit_classifier":
        model = classifier.build(spec).double()
        y = torch.randint(10, (16,), generator=g)
        classifier.fit(model, x, y, epochs=1, batch_size=8, lr=1e-2, device="cpu", **options)
        versions = {"DigitClassifier": classifier.DigitClassifier.version, "classifier_trainer": classifier.VERSION}
    else:
        model = M.build(spec).double()
        transform = noise.transform(options.pop("corruption")) if "corruption" in options else None
        y = torch.randint(10, (16,), generator=g) if T.takes_labels(model) else None
        T.fit(model, x, epochs=1, batch_size=8, lr=1e-2, device="cpu", progress=False, transform=transform, y_train=y,
              **options)
        config = T.model_config(spec, dataset="mnist", n_train=16, epochs=1, batch_size=8, lr=1e-2, seed=0,
                                corruption=GOLDEN_CASES[case][1].get("corruption"))
        versions = config["versions"]
        versions.pop("data")
    digits = ";".join(f"{name}:" + ",".join(f"{v:.7e}" for v in t.flatten().tolist())
                      for name, t in sorted(model.state_dict().items()))
    import hashlib

    return versions, hashlib.sha256(digits.encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_weights_catch_a_forgotten_version_bump(case):
    versions, digest = _golden(case)
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("LATENTBOOK_RECORD_GOLDEN") == "1":
        recorded[case] = {"versions": versions, "sha256": digest}
        store.write_text(GOLDEN, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    assert case in recorded, f"no golden weights for {case}: run LATENTBOOK_RECORD_GOLDEN=1 pytest {__file__}"
    if recorded[case]["versions"] != versions:
        pytest.fail(f"{case}: versions {versions} differ from the recorded {recorded[case]['versions']}; "
                    f"after a deliberate bump, record the new weights: LATENTBOOK_RECORD_GOLDEN=1 pytest {__file__}")
    assert recorded[case]["sha256"] == digest, (
        f"{case}: two training steps give other weights than recorded for versions {versions}. A change altered "
        "trained weights: bump the version of what changed (the model class's `version`, train.VERSION, "
        "losses.VERSION, noise.VERSION or classifier.VERSION), so that stored and published models are not "
        "mistaken for the new ones; then record the new weights.")


# ---------------------------------------------------------------------------------------------
# Structure: no import cycle, one store, one atomic write
# ---------------------------------------------------------------------------------------------


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere (top level or inside a function)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "latentbook":
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latentbook."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("latentbook.")}
        graph[name] = found - {"__version__", name}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert graph["store"] == set()  # the bottom layer: everything may use it, it uses nothing
    assert "evaluate" not in graph["noise"]  # evaluation lives in evaluate


def test_one_store_and_one_atomic_write():
    for path in PACKAGE.glob("*.py"):
        if path.stem == "store":
            continue
        text = path.read_text()
        for marker in ("NamedTemporaryFile(", "torch.save(", ".tmp\"", "user_cache_dir(\"latentbook\")) / \"models\""):
            assert marker not in text, (path.name, marker)
        if "os.replace(" in text:  # only a whole unpacked folder may be moved into place by hand
            assert path.stem == "build" and text.count("os.replace(") == 1 and "os.replace(package, target)" in text


# ---------------------------------------------------------------------------------------------
# Published entries, fetched by checksum
# ---------------------------------------------------------------------------------------------


def _publish(source: Path, site: Path, tmp_path: Path) -> dict:
    """Export every entry of the store ``source`` into ``site/models`` as the full build does."""
    executed = tmp_path / "executed"
    executed.mkdir(exist_ok=True)
    entries = {e["key"]: e["checksum"] for e in store.info(source).entries}
    (executed / "only.json").write_text(json.dumps({"entries": entries}))
    os.environ["LATENTBOOK_MODELS"] = str(source)
    try:
        return build.export_models(ROOT, executed, site / "models", stems=["only"], log=lambda *a: None)
    finally:
        del os.environ["LATENTBOOK_MODELS"]


@pytest.fixture
def published(tmp_path, serve, monkeypatch):
    """A store with a trained TINY model and a classifier, published under a local web server; returns
    ``(url, site folder, the published weights)``; the test's own store is empty."""
    source = tmp_path / "source-store"
    model, _ = T.train_cached(TINY, cache_dir=source, **CACHE_RUN)
    site = tmp_path / "site"
    manifest = _publish(source, site, tmp_path)
    assert len(manifest["entries"]) == 1
    url = serve(site) + "/models/"
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", url)
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path / "learner-store"))
    return url, site, _weights(model)


def test_published_weights_are_fetched_not_trained(published, fit_calls, capfd):
    url, site, weights = published
    model, history = T.train_cached(TINY, **CACHE_RUN)
    assert fit_calls == [] and _same(_weights(model), weights) and history.epochs == 1
    (entry,) = store.info().entries
    assert entry["source"] == f"fetched from {url}"
    assert capfd.readouterr().err == ""  # fetched silently
    # the instructor's warm-up: everything listed is ready, nothing trained
    assert store.fetch_all(url) == 1


@pytest.mark.parametrize("fault", ["tampered", "truncated", "missing", "older", "unlisted"])
def test_a_bad_published_entry_is_refused_and_the_model_trained(published, fit_calls, capfd, fault):
    url, site, weights = published
    folder = site / "models"
    (pt,) = folder.glob("*.pt")
    manifest = json.loads((folder / store.MANIFEST).read_text())
    if fault == "tampered":  # one byte changed on the server
        blob = bytearray(pt.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        pt.write_bytes(bytes(blob))
    elif fault == "truncated":
        pt.write_bytes(pt.read_bytes()[:1000])
    elif fault == "missing":  # listed, but the file is gone (404)
        pt.unlink()
    elif fault == "older":  # published by a latentbook whose keys differ
        manifest = {"format": 1, "entries": {}}
    else:
        manifest["entries"] = {}
    (folder / store.MANIFEST).write_text(json.dumps(manifest))
    store._MANIFESTS.clear()
    model, _ = T.train_cached(TINY, **CACHE_RUN)
    assert len(fit_calls) == 1 and _same(_weights(model), weights)  # trained here, deterministically
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentbook: ") and err[0].endswith("computing it here"), err
    why = {"tampered": "hash", "truncated": "hash", "missing": "404", "older": "older latentbook (entry format 1)",
           "unlisted": "did not use this configuration"}[fault]
    assert why in err[0], err
    # the store holds the model trained here, whole, and no trace of the refused download
    (entry,) = store.info().entries
    assert entry["source"] == "made here" and not list(store.folder().glob(".*.tmp*"))


def test_offline_or_placeholder_addresses(tmp_path, monkeypatch, fit_calls, capfd):
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path / "store"))
    for placeholder in ("https://latentbook.example.org/models/", "http://models.example/", "off", ""):
        monkeypatch.setenv("LATENTBOOK_MODELS_URL", placeholder)
        assert store.models_url() is None or placeholder == ""
    assert store.is_placeholder("https://latentbook.example.org/models/")
    assert not store.is_placeholder("https://someone.github.io/latentbook/models/")
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "http://127.0.0.1:9/models/")  # nothing listens: offline
    T.train_cached(TINY, **CACHE_RUN)
    err = capfd.readouterr().err
    assert len(fit_calls) == 1 and "cannot read http://127.0.0.1:9/models/manifest.json" in err
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", "ftp://somewhere/models/")
    with pytest.raises(ValueError, match="http"):
        store.models_url()


def test_the_address_is_configured_once_beside_the_repository():
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["latentbook"]["models_url"]
    assert "repository" in config and store.is_placeholder(url)  # nothing is published yet
    os.environ.pop("LATENTBOOK_MODELS_URL", None)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT / "book")  # a chapter runs inside the checkout: the address comes from _config.yml
        assert store._config_file_url() == url
    finally:
        os.chdir(cwd)

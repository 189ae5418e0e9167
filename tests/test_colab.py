"""A learner's fresh start, as closely as this machine allows: every chapter runs top to bottom in an
environment holding only what Colab preinstalls plus ``pip install`` of the package, from an empty
folder, with no data and an empty store, fetching the published book's models and evaluations.

The environment is a new venv with Colab's preinstalled libraries (torch and torchvision at this
machine's versions), then the package installed (not editable) from a copy of its own files. Each
chapter's notebook is copied alone into an empty folder and executed there with papermill (smoke
mode) on a kernel of that venv, with fresh data and model stores (a new Colab runtime has neither).
The published book is this checkout's smoke build, its ``models/`` served on 127.0.0.1: nothing may
train (the trainers raise), every claim holds, and every printed figure equals the published page's.
Where a full build was made here, every chapter does the same in full mode on its exported models.
A tampered published file is refused, the model trained instead, and the reason printed.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

import pytest
import torch
import torchvision

from conftest import SMOKE
from latentbook import build, store

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)
# What Colab preinstalls, of what the chapters import (torch and torchvision: this machine's builds).
COLAB_PREINSTALLED = [
    f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
    "numpy", "matplotlib", "scikit-learn", "scipy", "tqdm", "ipywidgets", "ipykernel", "platformdirs",
]
PACKAGE_FILES = ["pyproject.toml", "README.md", "latentbook"]

pytestmark = pytest.mark.slow


def _pip(python: Path, *args: str) -> str:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _torch_version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """``(python, jupyter_path)``: the Colab-like venv and the folder holding its kernel spec."""
    base = tmp_path_factory.mktemp("colab")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _pip(python, *COLAB_PREINSTALLED)
    before = _torch_version(python)
    # the package, installed as a learner's pip would: from its own files only, not editable
    source = base / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, source / name)
    shutil.rmtree(source / "latentbook" / "__pycache__", ignore_errors=True)
    _pip(python, str(source))
    assert _torch_version(python) == before, "installing latentbook replaced Colab's torch"
    jupyter = base / "jupyter"
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(jupyter), "--name", "colab-fresh"],
                   check=True, capture_output=True)
    return python, jupyter / "share" / "jupyter"


def test_the_package_comes_from_the_venv(colab, tmp_path):
    python, _ = colab
    out = subprocess.run([str(python), "-c", "import latentbook, sys; print(latentbook.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    assert Path(out.strip()).is_relative_to(python.parents[1]), out
    # the notebook-building tools are not there: chapters must not need them
    proc = subprocess.run([str(python), "-c", "import jupyter_book"], capture_output=True)
    assert proc.returncode != 0


# Loaded by the Colab-like kernel (PYTHONPATH): with published weights present, training is a failure.
NO_TRAINING = """
import latentbook.classifier, latentbook.train

def _refuse(*args, **kwargs):
    raise AssertionError("a trainer was called although the published book has this model")

latentbook.train.fit = latentbook.classifier.fit = _refuse
"""


@pytest.fixture(scope="module")
def published(smoke_build, serve):
    """``(url, models folder)`` of the published (smoke) book, served on 127.0.0.1."""
    html, _ = smoke_build
    assert json.loads((html / "models" / store.MANIFEST).read_text())["entries"]
    return serve(html) + "/models/", html / "models"


def _fresh_start(stem: str, tmp_path: Path, monkeypatch, jupyter_path: Path, url: str, *, guard: bool,
                 params: dict = SMOKE) -> Path:
    """Execute ``stem`` alone in an empty folder on the Colab-like kernel, with empty data and model
    stores and ``url`` as the published address; ``guard``: make every trainer raise."""
    folder = tmp_path / "content"  # Colab's working folder, empty but for the notebook
    folder.mkdir()
    notebook = folder / f"{stem}.ipynb"
    shutil.copy2(ROOT / "notebooks" / f"{stem}.ipynb", notebook)
    for var in ("PYTHONPATH", "LATENTBOOK_DATA", "LATENTBOOK_MODELS"):
        monkeypatch.delenv(var, raising=False)
    if guard:
        (tmp_path / "guard").mkdir()
        (tmp_path / "guard" / "sitecustomize.py").write_text(NO_TRAINING)
        monkeypatch.setenv("PYTHONPATH", str(tmp_path / "guard"))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user caches: data and models start empty
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("LATENTBOOK_PROGRESS", "0")
    monkeypatch.setenv("LATENTBOOK_MODELS_URL", url)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    out = folder / f"{stem}.out.ipynb"
    build.run_notebook(notebook, out, params, cwd=folder, kernel_name="colab-fresh")
    return out


def _stored(tmp_path: Path) -> dict[str, dict]:
    """The learner's store: key -> description."""
    folder = tmp_path / "home" / ".cache" / "latentbook" / "models"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_runs_from_a_fresh_start_on_published_weights(colab, published, stem, tmp_path, monkeypatch):
    _, jupyter_path = colab
    url, _ = published
    out = _fresh_start(stem, tmp_path, monkeypatch, jupyter_path, url, guard=True)
    # every claim held (a false one stops the chapter) and every printed figure is the published one
    assert build.printed(out) == build.printed(ROOT / "_executed" / "smoke" / f"{stem}.ipynb")
    stored = _stored(tmp_path)
    used = json.loads((ROOT / "_executed" / "smoke" / f"{stem}.json").read_text())["entries"]
    assert set(stored) == set(used)  # all it needed came from the published book...
    assert all(d["source"] == f"fetched from {url}" for d in stored.values())  # ...and nothing was made here


FULL_SITE, FULL_EXECUTED = ROOT / "_build" / "full" / "html", ROOT / "_executed" / "full"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_full_chapter_runs_from_a_fresh_start_on_the_published_full_book(colab, serve, stem, tmp_path, monkeypatch):
    """The same on the published book itself, where a full build (``make book``) was made here: its
    exported models served, the chapter in full mode with the parameters it was published with."""
    stamp = FULL_EXECUTED / f"{stem}.json"
    if not ((FULL_SITE / "models" / store.MANIFEST).is_file() and stamp.is_file()):
        pytest.skip("no full build here (make book)")
    params = json.loads(stamp.read_text())["params"]
    url = serve(FULL_SITE) + "/models/"
    _, jupyter_path = colab
    out = _fresh_start(stem, tmp_path, monkeypatch, jupyter_path, url, guard=True, params=params)
    assert build.printed(out) == build.printed(FULL_EXECUTED / f"{stem}.ipynb")
    stored = _stored(tmp_path)
    assert set(stored) == set(json.loads(stamp.read_text())["entries"])
    assert all(d["source"] == f"fetched from {url}" for d in stored.values())


def test_the_guard_would_catch_training(colab, tmp_path, monkeypatch):
    """The guard of the test above is real: with nothing published, the same kernel refuses to train."""
    _, jupyter_path = colab
    with pytest.raises(Exception, match="a trainer was called"):
        _fresh_start("autoencoders", tmp_path, monkeypatch, jupyter_path, "off", guard=True)


def test_a_tampered_published_model_is_refused_and_trained(colab, published, serve, tmp_path, monkeypatch):
    _, jupyter_path = colab
    _, models = published
    used = json.loads((ROOT / "_executed" / "smoke" / "autoencoders.json").read_text())["entries"]
    site = tmp_path / "site"
    shutil.copytree(models, site / "models")
    victim = site / "models" / f"{sorted(used)[0]}.pt"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte changed on the server
    victim.write_bytes(bytes(blob))
    out = _fresh_start("autoencoders", tmp_path, monkeypatch, jupyter_path, serve(site) + "/models/", guard=False)
    nb = nbformat.read(out, as_version=4)
    errors = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream" and o.get("name") == "stderr")
    refused = [line for line in errors.splitlines() if line.startswith("latentbook: ")]
    assert len(refused) == 1 and "could not fetch" in refused[0] and "hash" in refused[0], errors
    assert refused[0].endswith("computing it here")
    stored = _stored(tmp_path)
    assert stored[victim.stem]["source"] == "made here"  # trained here instead...
    assert sum(d["source"] == "made here" for d in stored.values()) == 1  # ...and only that one
    mine = torch.load(tmp_path / "home" / ".cache" / "latentbook" / "models" / f"{victim.stem}.pt", weights_only=True)
    theirs = torch.load(models / f"{victim.stem}.pt", weights_only=True)
    assert all(torch.equal(mine["tensors"][k], theirs["tensors"][k]) for k in theirs["tensors"])  # the same weights

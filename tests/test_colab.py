"""A learner's fresh start, as closely as this machine allows: every chapter runs top to bottom in an
environment holding only what Colab preinstalls plus ``pip install`` of the package, from an empty
folder, with no data and no model cache present.

The environment is a new venv with Colab's preinstalled libraries (torch and torchvision at this
machine's versions), then the package installed (not editable) from a copy of its own files. Each
chapter's notebook is copied alone into an empty folder and executed there with papermill (smoke
mode) on a kernel of that venv, with fresh data and model caches (a new Colab runtime has neither).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from latentbook import build

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


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_runs_from_a_fresh_start(colab, stem, tmp_path, monkeypatch):
    _, jupyter_path = colab
    folder = tmp_path / "content"  # Colab's working folder, empty but for the notebook
    folder.mkdir()
    notebook = folder / f"{stem}.ipynb"
    shutil.copy2(ROOT / "notebooks" / f"{stem}.ipynb", notebook)
    for var in ("PYTHONPATH", "LATENTBOOK_DATA", "LATENTBOOK_MODELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user caches: data and models start empty
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("LATENTBOOK_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    build.run_notebook(notebook, folder / f"{stem}.out.ipynb", {"MODE": "smoke", "DEVICE": "cpu",
                       "DATASET": "mnist", "SEED": 0}, cwd=folder, kernel_name="colab-fresh")

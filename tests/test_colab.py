"""A learner's fresh start, as closely as this machine allows: every chapter's Colab edition
(:mod:`latentbook.colab`) runs top to bottom in an environment holding only what Colab preinstalls
(``tests/colab_preinstalled.txt``), from an empty folder, with no data and an empty store, fetching the
published book's models and evaluations.

The environment is a new venv with Colab's recorded versions (torch and torchvision: this machine's
builds). The package is not installed in it: the notebooks' own install cell installs it, with
``%pip``, from the commit the edition was built from (here a git repository on disk holding the package's
files as one commit), and must upgrade nothing Colab had. Each chapter's Colab notebook is copied
alone into an empty folder and executed there with papermill (smoke mode) on a kernel of that venv.
The published book is this checkout's smoke build, its ``models/`` served on 127.0.0.1: nothing may
train (the trainers raise), every claim holds, and every printed figure equals the published page's.
Where a full build was made here, every chapter does the same in full mode on its exported models.
A tampered published file is refused, the model trained instead, and the reason printed.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat

import pytest
import torch

from conftest import SMOKE
from latentbook import build, colab, store

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(smoke_build, serve):
    """``(url, models folder)`` of the published (smoke) book, served on 127.0.0.1."""
    html, _ = smoke_build
    assert json.loads((html / "models" / store.MANIFEST).read_text())["entries"]
    return serve(html) + "/models/", html / "models"


def _edition(folder: Path, executed: Path, release: colab.Release, url: str, mode: str) -> Path:
    """The Colab edition of the chapters executed in ``executed``, naming ``release``'s commit and ``url``."""
    colab.write(ROOT, executed, folder, colab.Release(release.repository, release.commit, url, mode), stems=CHAPTERS)
    return folder


@pytest.fixture(scope="module")
def edition(published, colab_installed, tmp_path_factory):
    """The Colab edition of the smoke book, naming the repository on disk and the served models."""
    url, _ = published
    return _edition(tmp_path_factory.mktemp("edition"), ROOT / "_executed" / "smoke", colab_installed["release"], url,
                    "smoke")


def test_the_install_cell_installs_the_built_commit_and_changes_nothing_colab_has(colab_installed, colab_env,
                                                                                  tmp_path):
    text, before, after = colab_installed["printed"], colab_installed["before"], colab_installed["after"]
    commit = colab_installed["release"].commit
    assert f"installing latentbook at commit {commit[:12]}" in text, text[-2000:]
    assert "no restart needed" in text, text[-2000:]
    changed = {name: (before[name], after.get(name)) for name in before if after.get(name) != before[name]}
    assert not changed, f"the install cell changed what Colab preinstalls: {changed}"
    python, _ = colab_env
    direct = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                             "print(m.distribution('latentbook').read_text('direct_url.json'))"],
                            capture_output=True, text=True, check=True, cwd=tmp_path).stdout  # not the checkout's
    assert json.loads(direct)["vcs_info"]["commit_id"] == commit  # the very commit the edition names


def test_the_package_comes_from_the_venv(colab_env, colab_installed, tmp_path):
    python, _ = colab_env
    out = subprocess.run([str(python), "-c", "import latentbook, sys; print(latentbook.__file__)"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    assert Path(out.strip()).is_relative_to(python.parents[1]), out
    # the notebook-building tools are not there: chapters must not need them
    proc = subprocess.run([str(python), "-c", "import jupyter_book"], capture_output=True)
    assert proc.returncode != 0


# Loaded by the Colab-like kernel (PYTHONPATH): with published weights present, training is a failure.
# Every stored model (the zoo's and the judge classifier) is trained through train.load_or_train;
# its train_it() runs only when the store and the published book lack the model. The chapters'
# hand-built tiny models, trained on purpose by a visible loop and lb.train.fit, are not stored.
NO_TRAINING = """
import latentbook.train

_load_or_train = latentbook.train.load_or_train

def _refuse(*args, **kwargs):
    raise AssertionError("a stored model was trained although the published book has it")

def _guarded(config, model, train_it, **kwargs):
    return _load_or_train(config, model, _refuse, **kwargs)

latentbook.train.load_or_train = _guarded
"""


def _fresh_start(source: Path, tmp_path: Path, monkeypatch, jupyter_path: Path, url: str, *, guard: bool,
                 params: dict = SMOKE) -> Path:
    """Execute the Colab notebook ``source`` alone in an empty folder on the Colab-like kernel, with empty
    data and model stores and ``url`` as the published address; ``guard``: make every trainer raise."""
    folder = tmp_path / "content"  # Colab's working folder, empty but for the notebook
    folder.mkdir()
    notebook = folder / source.name
    shutil.copy2(source, notebook)
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
    out = folder / f"{source.stem}.out.ipynb"
    build.run_notebook(notebook, out, params, cwd=folder, kernel_name="colab-fresh")
    return out


def _stored(tmp_path: Path) -> dict[str, dict]:
    """The learner's store: key -> description."""
    folder = tmp_path / "home" / ".cache" / "latentbook" / "models"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def _same_figures(out: Path, published: Path) -> None:
    """The Colab run printed what the published execution printed (its first cell, the install cell,
    found the package installed)."""
    mine = build.printed(out)
    assert any("is installed here; nothing to do" in line for line in mine[0]), mine[0]
    assert mine[1:] == build.printed(published)
    # and showed the same widgets, here on Colab's ipywidgets 7
    assert _widget_views(out) == _widget_views(published)


def _widget_views(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for c in nb.cells
               if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_runs_from_a_fresh_start_on_published_weights(colab_env, edition, published, stem,
                                                               tmp_path, monkeypatch):
    _, jupyter_path = colab_env
    url, _ = published
    out = _fresh_start(edition / f"{stem}.ipynb", tmp_path, monkeypatch, jupyter_path, url, guard=True)
    # every claim held (a false one stops the chapter) and every printed figure is the published one
    _same_figures(out, ROOT / "_executed" / "smoke" / f"{stem}.ipynb")
    stored = _stored(tmp_path)
    used = json.loads((ROOT / "_executed" / "smoke" / f"{stem}.json").read_text())["entries"]
    assert set(stored) == set(used)  # all it needed came from the published book...
    assert all(d["source"] == f"fetched from {url}" for d in stored.values())  # ...and nothing was made here


FULL_SITE, FULL_EXECUTED = ROOT / "_build" / "full" / "html", ROOT / "_executed" / "full"


@pytest.fixture(scope="module")
def full_edition(serve, colab_installed, tmp_path_factory):
    """``(folder, url)``: the Colab edition of the full book built here, its models served."""
    if not (FULL_SITE / "models" / store.MANIFEST).is_file() or build.stale(ROOT, CHAPTERS[-1], {
            **build.DEFAULT_PARAMS}, FULL_EXECUTED):
        pytest.skip("no current full build here (make book)")
    url = serve(FULL_SITE) + "/models/"
    return _edition(tmp_path_factory.mktemp("full-edition"), FULL_EXECUTED, colab_installed["release"], url,
                    "full"), url


@pytest.mark.parametrize("stem", CHAPTERS)
def test_full_chapter_runs_from_a_fresh_start_on_the_published_full_book(colab_env, full_edition, stem,
                                                                         tmp_path, monkeypatch):
    """The same on the published book itself, where a full build (``make book``) was made here: its
    exported models served, the chapter in full mode with the parameters it was published with."""
    folder, url = full_edition
    stamp = json.loads((FULL_EXECUTED / f"{stem}.json").read_text())
    _, jupyter_path = colab_env
    out = _fresh_start(folder / f"{stem}.ipynb", tmp_path, monkeypatch, jupyter_path, url, guard=True,
                       params=stamp["params"])
    _same_figures(out, FULL_EXECUTED / f"{stem}.ipynb")
    stored = _stored(tmp_path)
    assert set(stored) == set(stamp["entries"])
    assert all(d["source"] == f"fetched from {url}" for d in stored.values())


def test_the_guard_would_catch_training(colab_env, edition, tmp_path, monkeypatch):
    """The guard of the test above is real: with nothing published, the same kernel refuses to train."""
    _, jupyter_path = colab_env
    with pytest.raises(Exception, match="a stored model was trained"):
        _fresh_start(edition / "autoencoders.ipynb", tmp_path, monkeypatch, jupyter_path, "off", guard=True)


def test_a_tampered_published_model_is_refused_and_trained(colab_env, edition, published, serve, tmp_path,
                                                          monkeypatch):
    _, jupyter_path = colab_env
    _, models = published
    used = json.loads((ROOT / "_executed" / "smoke" / "autoencoders.json").read_text())["entries"]
    site = tmp_path / "site"
    shutil.copytree(models, site / "models")
    victim = site / "models" / f"{sorted(used)[0]}.pt"
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one byte changed on the server
    victim.write_bytes(bytes(blob))
    out = _fresh_start(edition / "autoencoders.ipynb", tmp_path, monkeypatch, jupyter_path, serve(site) + "/models/",
                       guard=False)
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

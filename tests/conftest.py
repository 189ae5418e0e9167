"""Shared test settings (no progress bars, a non-interactive matplotlib backend) and browser fixtures."""

import ast
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

os.environ.setdefault("LATENTBOOK_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SMOKE = {"MODE": "smoke", "DEVICE": "cpu", "DATASET": "mnist", "SEED": 0}


@pytest.fixture(scope="session")
def smoke_build():
    """The whole book executed in smoke mode, its site, student site and Colab edition built (reused when
    current): ``(html, runs)``."""
    from latentbook import build

    html, runs = build.build(ROOT, SMOKE, student=True)
    table = build.timing_table(runs)
    (ROOT / "_build" / "smoke" / "timings.txt").write_text(table + "\n")
    print("\n" + table)
    return html, runs


@pytest.fixture(scope="session")
def serve():
    """``serve(folder) -> "http://127.0.0.1:PORT"``: a quiet local web server for ``folder``."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(folder) -> str:
        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()


def click_explorer(page, selector: str, points):
    """Click the in-browser latent explorer ``selector`` (waits until it is ready) at ``points``
    (fractions of the plane, y downward). Returns ``(codes [P, 2], images [P, 784])``: the code each
    click decoded and the grey levels in [0, 1] drawn on the digit canvas."""
    import torch

    root = page.locator(selector).first
    root.scroll_into_view_if_needed()
    page.wait_for_function(f"() => document.querySelector({selector!r}).dataset.ready === 'yes'", timeout=20000)
    plane = root.locator("canvas.lb-plane").bounding_box()
    codes, images = [], []
    for fx, fy in points:
        page.mouse.click(plane["x"] + fx * plane["width"], plane["y"] + fy * plane["height"])
        codes.append([float(v) for v in root.get_attribute("data-z").split(",")])
        pixels = page.evaluate(f"""() => Array.from(document.querySelector({selector!r})
                                   .querySelector('canvas.lb-digit').getContext('2d').getImageData(0, 0, 28, 28).data)""")
        images.append(torch.tensor(pixels, dtype=torch.float32).reshape(784, 4)[:, 0] / 255)
    return torch.tensor(codes), torch.stack(images)


def assert_drawn_as_pytorch_decodes(model, codes, images, min_difference: float) -> None:
    """The drawn digits equal ``model.decode(codes)`` to the float16 storage and 8-bit display, and the
    first two differ from each other by more than ``min_difference`` somewhere (not one image twice)."""
    import torch

    with torch.no_grad():
        reference = model.decode(codes).reshape(len(codes), 784)
    assert (images - reference).abs().max() < 0.02 + 1 / 255
    assert (images[0] - images[1]).abs().max() > min_difference and (images[0] - images[1]).abs().mean() > 0.01


def edited_package_copy(tmp_path: Path) -> Path:
    """A copy of the package in which every module has a new comment and a changed docstring."""
    copy = tmp_path / "edited" / "latentbook"
    shutil.copytree(ROOT / "latentbook", copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.glob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        doc = ast.get_docstring(tree, clean=False)
        if doc:
            text = text.replace(doc, doc + "\n\nEdited for a test.", 1)
        path.write_text(text + "\n# a comment added by a test: it must change no key\n")
    return copy


NBVAL_SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
NBVAL_TAG = "nbval-check-output"


def run_nbval(executed: Path, stems, folder: Path, *, models: Path | None = None, edit=None):
    """Execute copies of the executed notebooks ``executed/<stem>.ipynb`` again under nbval, in ``folder``
    (chapters write files beside themselves), comparing the cells tagged ``nbval-check-output`` with the
    recorded outputs. ``models``: the store to use (an empty folder retrains every model); ``edit(nb)``
    may change a copy first. Returns the finished ``subprocess.CompletedProcess``."""
    import subprocess
    import sys

    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        nb = nbformat.read(executed / f"{stem}.ipynb", as_version=4)
        if edit:
            edit(nb)
        nbformat.write(nb, folder / f"{stem}.ipynb")
    from latentbook.build import KERNEL_ENV

    env = {**os.environ, **KERNEL_ENV, "LATENTBOOK_MODELS_URL": "off"}
    env.pop("LATENTBOOK_DEPENDENCIES", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    if models is not None:
        env["LATENTBOOK_MODELS"] = str(models)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "nbval_history", "--nbval-lax",
         "--nbval-current-env",
         "--nbval-sanitize-with", str(NBVAL_SANITIZE), "--nbval-cell-timeout", "3600",
         *[f"{stem}.ipynb" for stem in stems]],
        cwd=folder, capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def colab_env(tmp_path_factory):
    """``(python, jupyter_path)``: a venv holding Colab's recorded packages (tests/colab_env.py)."""
    import colab_env as env

    return env.make_venv(tmp_path_factory.mktemp("colab"))


@pytest.fixture(scope="session")
def colab_installed(colab_env, tmp_path_factory):
    """latentbook installed into the Colab-like venv by the Colab edition's install cell, from a commit of
    a git repository on disk: ``{"release", "printed", "before", "after"}`` (``pip freeze`` around it)."""
    import colab_env as env
    from latentbook import colab

    python, jupyter_path = colab_env
    base = tmp_path_factory.mktemp("release")
    repository, commit = env.release_repo(base)
    release = colab.Release(repository, commit, "http://127.0.0.1:9/models/", "smoke")
    before = env.freeze(python)
    assert "latentbook" not in before
    printed = env.run_install_cell(colab.install_cell(release), jupyter_path, base / "install")
    return {"release": release, "printed": printed, "before": before, "after": env.freeze(python)}

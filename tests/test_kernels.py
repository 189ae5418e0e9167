"""The build's kernels (``latentbook.kernels``) under stress: widget-heavy notebooks executed again and
again on a loaded CPU, each watched by a clock, never hang.

Before the fix, a notebook like ``_stress_notebook`` hung in 8 of 24 runs on a 2-core machine (papermill
waiting forever for a reply the kernel had sent; see the module's docstring), whether over TCP or Unix
sockets.
"""

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from conftest import SMOKE
from latentbook.build import KERNEL_ENV

ROOT = Path(__file__).resolve().parents[1]
RUNS = 12
WATCHDOG_S = 240  # one run takes 5-20 s here; a hang would wait forever

pytestmark = pytest.mark.slow


def _stress_notebook(path: Path) -> None:
    """Interacts drawing figures, an ``interactive`` that displays inside (as the latent explorer does),
    an Output widget and many display updates: the widget traffic of the book's chapters. (A cell creating
    300 widgets at once can still lose its final IOPub message on a loaded machine; no chapter does that.)"""
    cells = [
        "MODE = 'full'",
        "import matplotlib.pyplot as plt\nimport numpy as np\nimport ipywidgets as widgets\n"
        "from IPython.display import display\nrng = np.random.default_rng(0)",
        "def show_k(k):\n    fig, axes = plt.subplots(2, 10, figsize=(10, 2.2))\n"
        "    for ax in axes.flat:\n        ax.imshow(rng.random((28, 28)) * k / 300, cmap='gray'); ax.axis('off')\n"
        "    return fig\n"
        "widgets.interact(show_k, k=widgets.IntSlider(value=90, min=1, max=300, continuous_update=False));",
        "def show_noise(kind='gaussian', level=0.5):\n    fig, ax = plt.subplots(4, 8, figsize=(8, 4))\n"
        "    for a in ax.flat:\n        a.imshow(rng.random((28, 28)) * level, cmap='gray'); a.axis('off')\n"
        "    return fig\n"
        "widgets.interact(show_noise, kind=widgets.Dropdown(options=['gaussian', 'salt']),\n"
        "                 level=widgets.FloatSlider(value=0.5, min=0.0, max=0.9, step=0.05));",
        "def show(z1, z2):\n    fig, ax = plt.subplots(figsize=(4, 4)); ax.plot([z1], [z2], 'kx'); plt.close(fig)\n"
        "    display(fig)\n"
        "w = widgets.interactive(show, z1=widgets.FloatSlider(value=0, min=-3, max=3),\n"
        "                        z2=widgets.FloatSlider(value=0, min=-3, max=3))\nw",
        "for i in range(5000):\n    print(f'line {i} ' + 'x' * 60)",
        "out = widgets.Output()\ndisplay(out)\nwith out:\n    for i in range(200):\n        print('in the widget', i)\n"
        "h = display('start', display_id=True)\nfor i in range(500):\n    h.update(f'update {i}')",
        "widgets.interact(show_k, k=widgets.IntSlider(value=5, min=1, max=300));\nprint('done')",
    ]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


@contextmanager
def cpu_load(processes: int = 2):
    """Busy loops, one per core here, at low priority: the load under which the hang was seen."""
    busy = [subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()


def _execute(source: Path, target: Path, params: dict) -> float:
    """One ``build.run_notebook`` in its own process, killed if it outlives the watchdog."""
    env = {**os.environ, **KERNEL_ENV}
    code = ("import sys, json; from pathlib import Path; from latentbook import build; "
            "build.run_notebook(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), cwd=Path(sys.argv[2]).parent)")
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(source), str(target), json.dumps(params)],
                              capture_output=True, text=True, env=env, timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{source.name}: no result after {WATCHDOG_S} s: the execution hung")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.monotonic() - start


def test_a_widget_heavy_notebook_never_hangs_under_load(tmp_path):
    source = tmp_path / "stress.ipynb"
    _stress_notebook(source)
    seconds = []
    with cpu_load():
        for i in range(RUNS):
            seconds.append(_execute(source, tmp_path / f"out-{i}.ipynb", {"MODE": "full"}))
    done = nbformat.read(tmp_path / f"out-{RUNS - 1}.ipynb", as_version=4)
    assert "done" in done.cells[-1].outputs[-1].get("text", "")
    print(f"{RUNS} runs under load: {min(seconds):.1f}-{max(seconds):.1f} s each")


@pytest.mark.parametrize("stem", ["pca", "regularised", "applications"])
def test_the_widget_chapters_never_hang_under_load(smoke_build, tmp_path, stem):
    source = ROOT / "notebooks" / f"{stem}.ipynb"
    with cpu_load():
        for i in range(2):
            _execute(source, tmp_path / f"{stem}-{i}.ipynb", SMOKE)


def test_the_client_neither_drops_messages_nor_uses_tcp():
    """The client's sockets have no receive limit (a full queue made ZMQ drop a cell's final "idle"), and
    the kernel talks over Unix sockets."""
    from latentbook.kernels import KernelManager

    km = KernelManager()
    kc = km.client()
    iopub = kc.connect_iopub()
    try:
        assert iopub.rcvhwm == 0 and km.transport == "ipc" and os.path.isabs(km.ip)
    finally:
        iopub.close()
        kc.context.term()

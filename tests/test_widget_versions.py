"""Every widget the package and its chapters build works on Colab's ipywidgets (7.7) and on ipywidgets 8.

Colab preinstalls ipywidgets 7.7 (``tests/colab_preinstalled.txt``, from ``googlecolab/backend-info``);
this repository's ``.venv`` has 8. ``pip install`` of the package in Colab must keep Colab's versions, and
every widget must work on both. In a venv holding Colab's packages (one venv for the session), the package
is installed by the Colab edition's install cell (tests/colab_env.py, shared with tests/test_colab.py), and
nothing preinstalled may change version. Then, in that venv and in the current interpreter (ipywidgets 8),
the same probe executes a small notebook on a kernel of that interpreter (nbclient, as a notebook front end
would) and builds every widget:

* ``explorer.live_explorer`` and ``explorer.interpolation_explorer``: displayed as a cell's value, then
  their sliders moved; their callbacks must draw the first frame (ipywidgets 7 runs the callback when the
  widget is displayed, 8 when it is built) and the frame for the new values, into the widget's Output;
* the widgets the chapters put in ``widgets.interact`` (IntSlider, SelectionSlider, Dropdown with
  ``(label, value)`` pairs, FloatSlider), the way the chapters call them, with a function that returns a
  figure as theirs do;
* the training progress bar (``tqdm.auto``, an ipywidgets bar in a kernel);
* ``explorer.static_explorer`` (HTML and a weights file, no ipywidgets; built on both for completeness).

Every ``widgets.<name>(...)`` call in ``book/*.md`` and in the package is also checked against both
versions: the name exists and each keyword is a trait or parameter of it (ipywidgets 7 only warns about an
unknown keyword, such as 8's ``tooltip``, and drops it).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import colab_env as cenv

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = cenv.REQUIREMENTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def colab_venv(colab_env, colab_installed):
    """``(python, before, after)``: the Colab-like venv (tests/colab_env.py) and its ``pip freeze`` before and
    after the Colab edition's install cell installed the package into it."""
    return colab_env[0], colab_installed["before"], colab_installed["after"]


def test_the_requirements_name_their_source_and_this_machines_torch():
    text = REQUIREMENTS.read_text()
    assert "github.com/googlecolab/backend-info" in text and "pip-freeze.txt" in text
    assert re.search(r"\b[0-9a-f]{40}\b of \d{4}-\d{2}-\d{2}", text), "the snapshot's commit and date"
    pins = cenv.pins()
    assert pins["torch"] == torch.__version__.split("+")[0]
    assert pins["torchvision"] == torchvision.__version__.split("+")[0]
    assert pins["ipywidgets"].startswith("7.7.")


def test_installing_the_package_changes_nothing_colab_preinstalls(colab_venv):
    python, before, after = colab_venv
    pins = cenv.pins()
    assert {n: before.get(n) for n in pins} == pins, "the venv does not hold the requirements' versions"
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    assert not changed, f"pip install of the package changed preinstalled packages: {changed}"
    assert set(after) - set(before) == {"latentbook"}, set(after) - set(before)
    assert not after["latentbook"].startswith("file://" + str(ROOT)), "installed from the checkout, not a commit"


# ---------------------------------------------------------------------------------------------
# The chapters' widget calls
# ---------------------------------------------------------------------------------------------

_CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.S | re.M)


def _calls_in(code: str, where: str, first: int = 1) -> list[dict]:
    """The ``widgets.<name>(...)`` calls in ``code`` (whose line 1 is line ``first`` of ``where``)."""
    return [{"file": where, "line": first + node.lineno - 1, "name": node.func.attr,
             "keywords": [k.arg for k in node.keywords if k.arg]}
            for node in ast.walk(ast.parse(code))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "widgets"]


def widget_calls() -> list[dict]:
    """Every ``widgets.<name>(...)`` call in the code cells of ``book/*.md`` and in the package's modules:
    file, line, name, keywords."""
    calls = []
    for md in sorted((ROOT / "book").glob("*.md")):
        text = md.read_text()
        for match in _CODE_CELL.finditer(text):
            lines = match.group(1).split("\n")
            skip = 0
            if lines and lines[0].strip() == "---":  # a YAML block of cell options
                skip = lines.index("---", 1) + 1
            while skip < len(lines) and lines[skip].startswith(":"):  # ":tags: [...]" options
                skip += 1
            code = "\n".join("" if i < skip or line.lstrip().startswith(("%", "!")) else line
                             for i, line in enumerate(lines))
            calls += _calls_in(code, f"book/{md.name}", text.count("\n", 0, match.start(1)) + 1)
    for module in sorted((ROOT / "latentbook").glob("*.py")):
        calls += _calls_in(module.read_text(), f"latentbook/{module.name}")
    return calls


def test_the_widget_calls_are_found():
    calls = widget_calls()
    files = {c["file"] for c in calls}
    importing = {f"book/{md.name}" for md in (ROOT / "book").glob("*.md")
                 if "import ipywidgets as widgets" in md.read_text()}
    assert importing and files == importing | {"latentbook/explorer.py"}, (files, importing)
    assert {"interact", "interactive", "IntSlider", "FloatSlider", "SelectionSlider", "Dropdown"} <= {
        c["name"] for c in calls}


# ---------------------------------------------------------------------------------------------
# The probe: the same script under either interpreter
# ---------------------------------------------------------------------------------------------

# Executed by the interpreter under test: runs NOTEBOOK on a kernel of that interpreter, checks the widget
# calls of the book and the package against its ipywidgets, writes one JSON report.
PROBE = r'''
import inspect, json, sys
import ipywidgets as widgets
import nbformat
from nbclient import NotebookClient

report_path, calls_path, notebook_code = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

problems = []
for call in json.load(open(calls_path)):
    cls = getattr(widgets, call["name"], None)
    where = f'{call["file"]}:{call["line"]} widgets.{call["name"]}'
    if cls is None:
        problems.append(f"{where}: no such name in ipywidgets {widgets.__version__}")
    elif call["name"] not in ("interact", "interactive", "interact_manual"):  # their keywords: the function's
        accepted = set(cls.class_trait_names()) | set(inspect.signature(cls).parameters)
        problems += [f"{where}({k}=...): no such trait" for k in call["keywords"] if k not in accepted]

try:  # the build's kernel client (it needs jupyter_client 8; Colab's is 7.4: then nbclient's own)
    from latentbook.kernels import KernelManager
    extra = {"kernel_manager_class": KernelManager}
except ImportError:
    extra = {}
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in notebook_code])
NotebookClient(nb, kernel_name="python3", timeout=120, startup_timeout=120, store_widget_state=True,
               **extra).execute()
report = json.load(open("kernel.json"))
state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
report.update(
    client_ipywidgets=widgets.__version__, api_problems=problems,
    cell_outputs=[sorted({m for o in c.outputs for m in o.get("data", {})}) for c in nb.cells],
    models={k: {"name": m["model_name"], "state": {a: m["state"].get(a) for a in ("value", "max", "bar_style")},
                "outputs": sorted({mime for o in m["state"].get("outputs", []) for mime in o.get("data", {})})}
            for k, m in state.items()})
json.dump(report, open(report_path, "w"))
'''

# The notebook: each widget shown as a cell's value (as in the chapters), then moved as a reader would.
NOTEBOOK = [
    """import json, os, sys
import torch, ipywidgets as widgets
import latentbook
from latentbook import explorer, models, plots, train

calls = {"live": [], "interpolation": [], "interact": []}
_explorer_figure, _image_grid = explorer.explorer_figure, plots.image_grid

def explorer_figure(model, codes, labels, z, bounds):
    calls["live"].append([round(float(v), 6) for v in z])
    return _explorer_figure(model, codes, labels, z, bounds)

def image_grid(*args, **kwargs):
    calls["interpolation"].append(kwargs.get("title"))
    return _image_grid(*args, **kwargs)

explorer.explorer_figure, plots.image_grid = explorer_figure, image_grid
torch.manual_seed(0)
vae = models.build({"arch": "vae", "latent_dim": 2, "hidden": [32]}).eval()
codes, labels = torch.randn(300, 2), torch.randint(0, 10, (300,))
x = torch.rand(6, 1, 28, 28)""",
    """live = explorer.live_explorer(vae, codes, labels, lim=3.0, start=(0.5, -1.0))
live""",
    """interp = explorer.interpolation_explorer(vae, x, labels[:6], steps=4)
interp""",
    """def show(k, d, kind, q):
    calls["interact"].append([k, d, kind, q])
    return plots.compare_rows({"original": x[:2]}, n=2, title=f"{k} {d} {kind} {q}")

shown = widgets.interact(show, k=widgets.IntSlider(
    value=3, min=1, max=10, description="k", continuous_update=False),
    d=widgets.SelectionSlider(options=[2, 8, 32], value=8, description="d", continuous_update=False),
    kind=widgets.Dropdown(options=[("Gaussian", "gaussian"), ("masking", "mask")],
                          value="gaussian", description="noise"),
    q=widgets.FloatSlider(value=95, min=50, max=99.9, step=0.5, description="percentile",
                          continuous_update=False));""",
    """live.children[0].value = 1.5
live.children[1].value = -0.5
interp.children[1].value = 5
shown.widget.children[1].value = 32
shown.widget.children[2].value = "mask" """,
    """os.environ["LATENTBOOK_PROGRESS"] = "1"
ae = models.build({"arch": "mlp_ae", "latent_dim": 2, "hidden": [8]})
train.fit(ae, x, epochs=2, batch_size=3, device="cpu", progress=True);""",
    """html = explorer.static_explorer(vae, codes, labels, [str(i) for i in range(10)], name="probe", folder="exported")

def describe(w):
    controls = w.children[:-1]
    return {"class": type(w).__name__, "children": [type(c).__name__ for c in w.children],
            "descriptions": [c.description for c in controls], "values": [c.value for c in controls],
            "bounds": [[c.min, c.max] for c in controls if hasattr(c, "min")], "output": w.children[-1].model_id}

json.dump({"prefix": sys.prefix, "ipywidgets": widgets.__version__, "latentbook": latentbook.__file__,
           "calls": calls,
           "live": describe(live), "interpolation": describe(interp),
           "interact": {**describe(shown.widget), "result": type(shown.widget.result).__name__},
           "static": {"html": html.data, "bytes": os.path.getsize("exported/probe.bin")}},
          open("kernel.json", "w"))""",
]


def _probe(python: Path, folder: Path) -> dict:
    calls = folder / "book_calls.json"
    calls.write_text(json.dumps(widget_calls()))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(folder)),
           "LATENTBOOK_MODELS": str(folder / "models"), "LATENTBOOK_MODELS_URL": "off",
           "LATENTBOOK_DATA": str(folder / "data"), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    proc = subprocess.run([str(python), "-c", PROBE, str(folder / "report.json"), str(calls), json.dumps(NOTEBOOK)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((folder / "report.json").read_text())


@pytest.fixture(scope="module", params=["colab", "current"])
def probed(request, tmp_path_factory):
    """``(which, python, report)``: the probe's report in the Colab-like venv or the current interpreter."""
    if request.param == "colab":
        python = request.getfixturevalue("colab_venv")[0]
    else:
        python = Path(sys.executable)
    return request.param, python, _probe(python, tmp_path_factory.mktemp(f"probe-{request.param}"))


def test_the_kernel_is_the_interpreters(probed):
    which, python, report = probed
    prefix = subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert report["prefix"] == prefix
    assert report["ipywidgets"] == report["client_ipywidgets"]
    if which == "colab":
        assert report["ipywidgets"].startswith("7.7."), report["ipywidgets"]
        assert Path(report["latentbook"]).is_relative_to(prefix), "the package must come from the venv"
    else:
        assert report["ipywidgets"].startswith("8."), report["ipywidgets"]


def _output_mimes(report, widget) -> list[str]:
    return report["models"][report[widget]["output"]]["outputs"]


def test_live_explorer(probed):
    _, _, report = probed
    live = report["live"]
    assert live["class"] == "interactive"
    assert live["children"] == ["FloatSlider", "FloatSlider", "Output"]
    assert live["descriptions"] == ["z₁", "z₂"]
    assert live["bounds"] == [[-3.0, 3.0], [-3.0, 3.0]]
    assert live["values"] == [1.5, -0.5]
    calls = report["calls"]["live"]
    assert calls[0] == [0.5, -1.0], "the first frame was not drawn when the widget was built or shown"
    assert calls[-1] == [1.5, -0.5], "moving the sliders did not redraw"
    assert "image/png" in _output_mimes(report, "live")
    assert "application/vnd.jupyter.widget-view+json" in report["cell_outputs"][1]


def test_interpolation_explorer(probed):
    _, _, report = probed
    interp = report["interpolation"]
    assert interp["class"] == "interactive"
    assert interp["children"] == ["IntSlider", "IntSlider", "Output"]
    assert interp["descriptions"] == ["from", "to"]
    assert interp["bounds"] == [[0, 5], [0, 5]] and interp["values"] == [0, 5]
    # (the interact probe's compare_rows draws through image_grid too: its titles do not start so)
    titles = [t for t in report["calls"]["interpolation"] if t and t.startswith("from test image")]
    assert "#0" in titles[0] and "to #1" in titles[0]
    assert titles[-1].endswith(tuple(f"to #5 ({label})" for label in range(10))), titles[-1]
    assert "image/png" in _output_mimes(report, "interpolation")
    assert "application/vnd.jupyter.widget-view+json" in report["cell_outputs"][2]


def test_the_chapters_interact_widgets(probed):
    _, _, report = probed
    shown = report["interact"]
    assert shown["class"] == "interactive" and shown["result"] == "Figure"
    assert shown["children"] == ["IntSlider", "SelectionSlider", "Dropdown", "FloatSlider", "Output"]
    assert shown["values"] == [3, 32, "mask", 95.0]
    calls = report["calls"]["interact"]
    assert calls[0] == [3, 8, "gaussian", 95.0] and calls[-1] == [3, 32, "mask", 95.0]
    assert "image/png" in _output_mimes(report, "interact")
    assert "application/vnd.jupyter.widget-view+json" in report["cell_outputs"][3]


def test_the_progress_bar(probed):
    _, _, report = probed
    bars = [m["state"] for m in report["models"].values() if m["name"] == "FloatProgressModel"]
    assert bars == [{"value": 4.0, "max": 4.0, "bar_style": "success"}], bars
    assert "application/vnd.jupyter.widget-view+json" in report["cell_outputs"][5]


def test_static_explorer(probed):
    _, _, report = probed
    html = report["static"]["html"]
    assert 'class="lb-explorer"' in html and "data-meta=" in html and "<script>" in html
    assert report["static"]["bytes"] > 0


def test_the_chapters_and_the_package_call_only_what_both_versions_have(probed):
    _, _, report = probed
    assert report["api_problems"] == []

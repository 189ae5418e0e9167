"""How the build behaves, on a two-chapter book of plain Python (seconds, no training): progress while a
chapter runs, a failing cell named by its line in ``book/``, a build interrupted (Ctrl-C or killed) that
resumes and leaves no partial notebook, and two builds at once in one checkout.
"""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from latentbook import build

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"MODE": "smoke", "DEVICE": "cpu", "DATASET": "mnist", "SEED": 0}

HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Chapter {name}

```{{code-cell}} ipython3
:tags: [parameters, remove-cell]

MODE = "full"
DEVICE = "auto"
DATASET = "mnist"
SEED = 0
```

Some prose.
"""


def cell(code: str) -> str:
    return f"\n```{{code-cell}} ipython3\n{code.strip()}\n```\n"


def tiny_book(root: Path, chapters: dict[str, list[str]]) -> Path:
    """A book in ``root`` whose chapters (name -> code cells) are paired and ready to build."""
    (root / "book").mkdir(parents=True, exist_ok=True)
    (root / "notebooks").mkdir(exist_ok=True)
    names = list(chapters)
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: notebooks/{names[0]}\nchapters:\n"
                                   + "".join(f"- file: notebooks/{n}\n" for n in names[1:]))
    (root / "_config.yml").write_text('title: A tiny book\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n'
                                      "sphinx:\n  config:\n    html_theme_options:\n      use_download_button: false\n")
    for name, cells in chapters.items():
        (root / "book" / f"{name}.md").write_text(HEADER.format(name=name) + "".join(cell(c) for c in cells))
    build.sync(root)
    return root


def _as_in_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and exec keeps it so: a test suite run in the
    # background would otherwise hand the build a Ctrl-C it cannot hear. A terminal's foreground job hears it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _build(root: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "latentbook", "build", "--mode", "smoke", "--device", "cpu", *extra],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_as_in_a_terminal, **kwargs)


def test_code_cells_are_named_by_their_line_in_the_source(tmp_path):
    root = tiny_book(tmp_path, {"a": ["x = 1", "y = 2\nz = 3"]})
    lines = (root / "book" / "a.md").read_text().splitlines()
    found = build.code_cell_lines(root / "book" / "a.md")
    assert [lines[i - 1] for i in found] == ['MODE = "full"', "x = 1", "y = 2"]


def test_progress_names_the_long_cell_and_a_failure_names_its_line(tmp_path, monkeypatch):
    root = tiny_book(tmp_path, {"a": ["import time\nprint('start')\ntime.sleep(4)", "x = 1\ny = 0\nprint(x / y)"]})
    monkeypatch.setattr(build.CellProgress, "LONG_S", 1.0)
    monkeypatch.setattr(build.CellProgress, "EVERY_S", 1.0)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    out = root / "_executed" / "smoke"
    with pytest.raises(build.BuildError) as err:
        build.execute(root, PARAMS, out, log=lambda *a: None)
    lines = (root / "book" / "a.md").read_text().splitlines()
    sleep_line = lines.index("time.sleep(4)") + 1 - 2  # the cell begins two lines above
    assert "a: 1/3 cells" in stream.getvalue()
    assert f"running cell 2 of 3 (book/a.md, line {sleep_line})" in stream.getvalue()
    message = str(err.value)
    failing_line = lines.index("print(x / y)") + 1
    assert message.startswith(f"chapter 'a' failed in cell 3 of 3 (book/a.md, line {failing_line}): "
                              "ZeroDivisionError: division by zero"), message
    assert str(out / "a.failed.ipynb") in message and (out / "a.failed.ipynb").is_file()
    assert not (out / "a.ipynb").exists() and not list(out.glob(".*"))


def test_kernels_talk_over_unix_sockets_without_the_tcp_warning(tmp_path):
    root = tiny_book(tmp_path, {"a": ["import os\nprint(sorted(os.listdir('.')))"]})
    proc = _build(root, "--no-site")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "without encryption" not in output and "WARNING" not in output, output
    assert "executed a: 2 code cells in" in output


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_build_leaves_no_partial_notebook_and_resumes(tmp_path, how):
    hold, running = tmp_path / "hold", tmp_path / "running"
    hold.write_text("a chapter waits while this file exists")
    root = tiny_book(tmp_path / "book", {
        "a": ["print('a ran')"],
        "b": [f"import pathlib, time\npathlib.Path({str(running)!r}).touch()\n"
              f"while pathlib.Path({str(hold)!r}).exists():\n    time.sleep(0.2)", "print('b ran')"]})
    out = root / "_executed" / "smoke"
    proc = _build(root, "--no-site", start_new_session=True)
    deadline = time.monotonic() + 300
    while not running.exists():  # b's long cell is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    assert list(out.glob(".b.*.tmp.ipynb"))  # papermill's partial notebook, beside the final name
    os.killpg(proc.pid, how)  # the whole process group, as Ctrl-C in a terminal does
    output, _ = proc.communicate(timeout=120)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted: " in output, output
    assert (out / "a.ipynb").is_file() and (out / "a.json").is_file()
    assert not (out / "b.ipynb").exists() and not (out / "b.json").exists()
    if how == signal.SIGINT:
        assert not list(out.glob(".*.tmp*"))  # Ctrl-C cleans up at once; a killed run, at the next start
    hold.unlink()
    proc = _build(root, "--no-site")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    table = {line.split()[0]: line for line in output.splitlines() if line.split()[:1] in (["a"], ["b"])}
    assert table["a"].endswith("up to date") and table["b"].endswith("executed"), output
    assert "executing a" not in output and "executing b (not executed yet" in output, output
    assert not list(out.glob(".*.tmp*")) and not list(out.glob(".*.dependencies.json"))
    ran = nbformat.read(out / "b.ipynb", as_version=4)
    assert "b ran" in "".join(o.get("text", "") for c in ran.cells for o in c.get("outputs", []))


def test_two_builds_at_once_take_turns_and_leave_a_whole_site(tmp_path):
    build.vendor_assets(ROOT, log=lambda *a: None)  # the site's front-end files, from npm once
    root = tiny_book(tmp_path, {"a": ["import time\ntime.sleep(3)\nprint('a ran')"], "b": ["print('b ran')"]})
    (root / "_assets").mkdir()
    (root / "_assets" / "vendor").symlink_to(ROOT / "_assets" / "vendor", target_is_directory=True)
    first = _build(root)
    time.sleep(0.5)
    second = _build(root)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    both = "\n".join(outputs)
    assert "another build is running in this checkout (pid" in both
    assert both.count("executing a ") == 1 and both.count("executing b ") == 1, both  # each chapter once
    html = root / "_build" / "smoke" / "html"
    for name in ("a", "b"):
        assert f"Chapter {name}" in (html / "notebooks" / f"{name}.html").read_text()
    assert not list((root / "_executed" / "smoke").glob(".*.tmp*"))

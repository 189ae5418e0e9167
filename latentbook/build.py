"""Execute the chapters, build the website and publish the models the book used.

The pipeline (``docs/architecture.md``):

1. ``book/*.md`` are the sources; ``notebooks/*.ipynb`` are their output-free jupytext pairs.
   :func:`check_pairs` refuses to go on when a pair is out of sync or a notebook carries outputs.
2. papermill executes each chapter into ``_executed/<mode>/`` (never in place, so a later
   ``jupytext --sync`` cannot copy papermill's injected cell back into ``book/``). The run records what
   it used (``<stem>.json``); a chapter executes again only when its code cells, parameters, the
   meaning of a module it imported (:func:`module_fingerprint`) or a store entry it used changed
   (:func:`stale`). A prose-only edit is merged into the executed notebook (:func:`merge_prose`).
3. Jupyter Book 1 (Sphinx) builds ``_build/<mode>/html`` from the executed notebooks, executing
   nothing itself, with warnings as errors. MathJax, require.js and the widget manager are vendored
   from npm into ``_assets/vendor`` so no page loads anything from outside the site.
4. :func:`export_models` copies every store entry the chapters used into the site's ``models/``,
   with a manifest of SHA-256 hashes, from which :mod:`latentbook.store` fetches.
5. :func:`write_colab` writes the Colab edition (:mod:`latentbook.colab`) into ``_build/<mode>/colab``;
   with ``student``, the site is built once more without solutions (``_build/<mode>-student/html``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from latentbook import store

PACKAGE_DIR = Path(__file__).resolve().parent

# Front-end assets, pinned with the integrity hashes the npm registry publishes for them.
VENDOR = {
    "mathjax": ("mathjax@3.2.2", "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="),
    "requirejs": ("requirejs@2.3.7", "sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw=="),
    "html-manager": ("@jupyter-widgets/html-manager@1.0.15", "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="),
    # what Colab renders Markdown cells and their math with: tests/colab_render.py renders the Colab edition
    "marked": ("marked@15.0.12", "sha512-8dD6FusOQSrpv9Z1rdNMdlSgQOIP880DHqnohobOmYLElGEqAL/JvxvuxZO16r4HtjTlfPRDC1hbvxC9dPN2nA=="),
    "katex": ("katex@0.16.47", "sha512-Eeo8Ys1doU1z+x8AZsPpQu+p/QcZBI5PeOo7QGQdy2x2m0MU/hYagBbGOmXwr5KVbEfVuWv9LpnQWeehogurjg=="),
    # the accessibility checker the browser tests run on every page (tests/test_accessibility.py)
    "axe-core": ("axe-core@4.14.1", "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="),
}

SITE_VENDOR = ("mathjax", "requirejs", "html-manager")  # the rest (marked, KaTeX, axe-core) serve the tests

DEFAULT_PARAMS = {"MODE": "full", "DEVICE": "auto", "DATASET": "mnist", "SEED": 0}


class BuildError(RuntimeError):
    """A chapter could not be executed or the site could not be built."""


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``_toc.yml`` (the repository root), searched upward from ``start``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "book").is_dir():
            return folder
    raise BuildError(f"no latentbook checkout (a folder with _toc.yml and book/) at or above {here}")


def chapters(root: Path) -> list[str]:
    """Chapter stems in table-of-contents order, e.g. ``["preface", "data", ...]``."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []) or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return [Path(f).stem for f in files]


# --------------------------------------------------------------------------------------------
# 1. Pairing


def _cells(path: Path) -> list[tuple[str, str]]:
    import jupytext

    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def check_pairs(root: Path) -> list[str]:
    """Problems with the ``book/*.md`` <-> ``notebooks/*.ipynb`` pairs (empty when all is well)."""
    problems = []
    md = {p.stem: p for p in (root / "book").glob("*.md")}
    nb = {p.stem: p for p in (root / "notebooks").glob("*.ipynb")}
    for stem in sorted(md.keys() - nb.keys()):
        problems.append(f"book/{stem}.md has no paired notebooks/{stem}.ipynb (run `make sync`)")
    for stem in sorted(nb.keys() - md.keys()):
        problems.append(f"notebooks/{stem}.ipynb has no source book/{stem}.md")
    for stem in sorted(md.keys() & nb.keys()):
        raw = json.loads(nb[stem].read_text())
        dirty = [
            i
            for i, c in enumerate(raw["cells"])
            if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
        ]
        if dirty:
            problems.append(f"notebooks/{stem}.ipynb carries outputs in cells {dirty} (commit it output-free)")
        if _cells(md[stem]) != _cells(nb[stem]):
            problems.append(f"book/{stem}.md and notebooks/{stem}.ipynb differ (run `make sync`)")
    for stem in chapters(root):
        if stem not in md:
            problems.append(f"_toc.yml lists {stem!r} but book/{stem}.md does not exist")
    return problems


def sync(root: Path) -> None:
    """Rewrite every ``notebooks/*.ipynb`` from its ``book/*.md`` source, output-free."""
    import jupytext

    for md in sorted((root / "book").glob("*.md")):
        nb = jupytext.read(md)
        for i, cell in enumerate(nb.cells):
            # Ids from position and content, so that a sync with no change in book/ changes no file.
            cell.id = f"c{i:03d}-" + hashlib.sha1(cell.source.encode()).hexdigest()[:8]
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        store.write_text(root / "notebooks" / f"{md.stem}.ipynb", jupytext.writes(nb, fmt="ipynb"))


# --------------------------------------------------------------------------------------------
# 2. Execution


def module_fingerprint(name: str, package_dir: Path = PACKAGE_DIR) -> str:
    """What a ``latentbook`` module means, not its bytes: the SHA-256 of its syntax tree with docstrings
    and comments gone (so editing either re-executes nothing), plus the bytes of the data files it
    reads at run time (``explorer.js``, inlined into the explorer's output). ``""`` for a module that
    no longer exists."""
    import ast

    parts = name.split(".")
    path = package_dir.joinpath(*parts[1:]).with_suffix(".py") if len(parts) > 1 else package_dir / "__init__.py"
    if not path.is_file():
        return ""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    h = hashlib.sha256(ast.dump(tree, include_attributes=False).encode())
    for data_file in PACKAGE_DATA.get(name, ()):
        h.update((package_dir / data_file).read_bytes())
    return h.hexdigest()


def _package_modules() -> list[str]:
    return ["latentbook", *sorted(f"latentbook.{p.stem}" for p in PACKAGE_DIR.glob("*.py")
                                  if p.stem not in ("__init__", "__main__"))]


# Files a module reads at run time, whose bytes shape a chapter's outputs.
PACKAGE_DATA = {"latentbook.explorer": ("explorer.js",)}


def code_key(root: Path, stem: str, params: dict) -> str:
    """The chapter's code cells (source and order) and the parameters it runs with: what, with the
    modules and store entries it used, decides its outputs. Prose, tags and metadata are not in it."""
    import nbformat

    nb = nbformat.read(root / "notebooks" / f"{stem}.ipynb", as_version=4)
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(b"\0cell\0" + cell.source.strip().encode())
    return h.hexdigest()


def _source_hash(root: Path, stem: str) -> str:
    return hashlib.sha256((root / "notebooks" / f"{stem}.ipynb").read_bytes()).hexdigest()


def stale(root: Path, stem: str, params: dict, out_dir: Path) -> str | None:
    """Why the executed chapter in ``out_dir`` must execute again, or None when it need not.

    Up to date means: the same code cells and parameters, each module it imported has the same
    :func:`module_fingerprint`, and each store entry it read or wrote is still in the store with the
    same checksum (a cleared or replaced entry re-executes, so the page and the store agree).
    """
    target, stamp = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.json"
    if not (target.is_file() and stamp.is_file()):
        return "not executed yet"
    try:
        recorded = json.loads(stamp.read_text())
    except ValueError:
        return "its record is unreadable"
    if recorded.get("code") != code_key(root, stem, params):
        return "its code cells or parameters changed"
    if "modules" not in recorded:
        return "no dependency record"
    changed = [m for m, fp in recorded["modules"].items() if module_fingerprint(m) != fp]
    if changed:
        return f"latentbook code it uses changed ({', '.join(sorted(changed))})"
    where = store.folder()
    for key, checksum in recorded.get("entries", {}).items():
        try:
            held = json.loads((where / f"{key}.json").read_text()).get("checksum")
        except (OSError, ValueError):
            held = None
        if held != checksum or not (where / f"{key}.pt").is_file():
            return f"store entry {key} it used is missing or changed"
    return None


def merge_prose(source: Path, executed: Path, target: Path) -> None:
    """Write ``target``: the cells of ``source`` (new prose) with the outputs of ``executed``, whose
    code cells are the same in the same order (papermill's injected parameters cell is kept)."""
    import nbformat

    new = nbformat.read(source, as_version=4)
    old = nbformat.read(executed, as_version=4)
    code = [c for c in old.cells if c.cell_type == "code"]
    cells = []
    for cell in new.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        ran = code.pop(0)
        if ran.source.strip() != cell.source.strip():
            raise BuildError(f"{source.name}: code cells differ from the executed notebook's; it must execute")
        cell.outputs, cell.execution_count = ran.outputs, ran.execution_count
        cell.metadata = {**cell.metadata, **{k: v for k, v in ran.metadata.items() if k == "papermill"}}
        cells.append(cell)
        if code and "injected-parameters" in code[0].metadata.get("tags", []):
            cells.append(code.pop(0))
    old.cells = cells
    store.write_text(target, nbformat.writes(old))


# Printed lines that depend on the moment, not on the computation: timings, downloads, fetch reports.
_VOLATILE = re.compile(r"\d s\b|seconds|\bms\b|getting (MNIST|Fashion-MNIST)|latentbook: |it/s|s/it")


def printed(path: Path) -> list[list[str]]:
    """What each code cell of an executed notebook printed (stdout), less the lines that depend on the
    moment (timings, downloads): two executions of the same chapter on the same weights print the same."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", []):
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                           and o.get("name") == "stdout")
            cells.append([line for line in text.splitlines() if not _VOLATILE.search(line)])
    return cells


@dataclass
class ChapterRun:
    stem: str
    seconds: float
    status: str  # "executed", "up to date" or "prose updated"


def code_cell_lines(md: Path) -> list[int]:
    """The line of a MyST source (1-based) where each code cell's code begins, in cell order: how a
    cell of the executed notebook is named to the person who edits ``book/<stem>.md``."""
    import jupytext

    sources = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    lines = md.read_text().splitlines()
    markers = [i for i, line in enumerate(lines) if line.startswith("```{code-cell}")]
    found = []
    for source, marker in zip(sources, markers):
        first = next((line for line in source.splitlines() if line.strip()), "")
        # After the marker come the cell's options (``:tags: [...]`` or a ``---`` block), then its code.
        at = next((j for j in range(marker + 1, len(lines)) if lines[j] == first or lines[j].startswith("```")),
                  marker + 1)
        found.append(at + 1)
    return found


class CellProgress:
    """Reports a chapter's execution on ``stream`` (stderr): cells done out of the total, the time
    elapsed and, once a cell has run for ``LONG_S``, that cell and its line in ``book/<stem>.md``.

    In a terminal one line is redrawn each second; in a log (CI, a pipe) a line is written when a cell
    turns long and each ``EVERY_S`` while it runs, so a 20-minute chapter is never silent for long.
    Passed to papermill as nbclient's cell hooks; it also names the cell a failure happened in.
    """

    LONG_S = 20.0
    EVERY_S = 60.0

    def __init__(self, stem: str, md: Path, stream=None):
        self.stem, self.md, self.stream = stem, md, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lines = code_cell_lines(md)
        self.where: dict[int, tuple[int, int]] = {}  # executed cell index -> (code cell number, md line)
        self.total = len(self.lines)
        self.done = 0
        self.current: int | None = None
        self.started = self.cell_started = time.monotonic()
        self.reported = 0.0
        self._stop = None

    # nbclient hooks (called in papermill's event loop)
    def on_notebook_start(self, notebook, **_):
        n = 0
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", []):
                self.where[index] = (n + 1, self.lines[n] if n < len(self.lines) else 0)
                n += 1

    def on_cell_execute(self, cell, cell_index, **_):
        self.current, self.cell_started, self.reported = cell_index, time.monotonic(), 0.0

    def on_cell_executed(self, cell, cell_index, **_):  # (nbclient's on_cell_complete fires on sending)
        if cell_index in self.where:
            self.done = max(self.done, self.where[cell_index][0])
        self.current = None

    def hooks(self) -> dict:
        return {"on_notebook_start": self.on_notebook_start, "on_cell_execute": self.on_cell_execute,
                "on_cell_executed": self.on_cell_executed}

    def locate(self, cell_index: int | None, line_in_cell: int = 1) -> str:
        """``"cell 23 of 61 (book/vae.md, line 312)"`` for an executed notebook's cell index; the line is
        the cell's first, or its ``line_in_cell``-th."""
        number, line = self.where.get(cell_index, (None, None)) if cell_index is not None else (None, None)
        if number is None:
            return "a cell papermill added (its parameters)" if cell_index is not None else "no cell"
        return f"cell {number} of {self.total} (book/{self.md.name}, line {line + line_in_cell - 1})"

    def status(self) -> str:
        now = time.monotonic()
        text = f"{self.stem}: {self.done}/{self.total} cells, {_clock(now - self.started)}"
        running = now - self.cell_started
        if self.current is not None and running >= self.LONG_S:
            text += f"; running {self.locate(self.current)} for {_clock(running)}"
        return text

    def _tick(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.status()[: shutil.get_terminal_size().columns - 1])
            self.stream.flush()
            return
        running = time.monotonic() - self.cell_started
        due = self.reported + self.EVERY_S if self.reported else self.LONG_S
        if self.current is not None and running >= due:
            self.reported = running
            print(self.status(), file=self.stream, flush=True)

    def __enter__(self):
        import threading

        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(1.0):
                self._tick()

        self._thread = threading.Thread(target=loop, name=f"progress-{self.stem}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def failure_message(stem: str, exc: BaseException, progress: CellProgress, kept: Path) -> str:
    """What a failed chapter reports: the chapter, the cell's number, the line of ``book/<stem>.md``
    the error was raised on, the exception, and where the partly executed notebook is kept."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(exc.traceback))
        # IPython names the cell's own frames "Cell In[<execution count>], line <n>"; the last is the
        # innermost line of the cell (deeper frames are in the package).
        hits = re.findall(rf"Cell In\[{exc.exec_count}\], line (\d+)", tb)
        where = progress.locate(exc.cell_index, int(hits[-1]) if hits else 1)
        what = f"{exc.ename}: {exc.evalue}"
        context = "\n".join(tb.strip().splitlines()[-12:])
    else:  # the kernel died, a cell timed out, papermill itself failed
        where = progress.locate(progress.current)
        what = f"{type(exc).__name__}: {exc}".strip()
        context = ""
    message = f"chapter {stem!r} failed in {where}: {what}"
    if context:
        message += "\n" + context
    return message + f"\n(the partly executed notebook is kept as {kept})"


# After a cell's reply, how long its last outputs may take to arrive. nbclient allows 4 s and papermill fails
# the chapter then; on a loaded 2-core machine a widget cell's hundreds of messages can take longer to be
# read (none is lost: see latentbook.kernels).
IOPUB_TIMEOUT_S = 120

# The environment a chapter's kernel runs in, wherever it is executed (build, tests, benchmarks): no progress
# bars, no debugger warning, figures drawn inline into the notebook.
KERNEL_ENV = {"LATENTBOOK_PROGRESS": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
              "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def run_notebook(source: Path, target: Path, params: dict, *, cwd: Path, kernel_name: str = "python3",
                 progress: CellProgress | None = None) -> None:
    """Execute ``source`` into ``target`` with papermill, injecting ``params``, on a
    :class:`latentbook.kernels.KernelManager` kernel (Unix sockets; a client that cannot miss a reply);
    ``progress`` receives nbclient's cell hooks. No cell has a time limit: full-mode cells train for minutes."""
    import papermill

    from latentbook.kernels import KernelManager

    papermill.execute_notebook(str(source), str(target), parameters=params, kernel_name=kernel_name,
                               cwd=str(cwd), progress_bar=False, report_mode=False,
                               kernel_manager_class=KernelManager, iopub_timeout=IOPUB_TIMEOUT_S,
                               **(progress.hooks() if progress else {}))


def execute(root: Path, params: dict, out_dir: Path, *, only: list[str] | None = None, force: bool = False,
            log=print) -> list[ChapterRun]:
    """Execute the chapters with papermill into ``out_dir``; skip those already current."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = chapters(root)
    if only:
        unknown = sorted(set(only) - set(stems))
        if unknown:
            raise BuildError(f"unknown chapter(s) {unknown}; the chapters are {stems}")
        stems = [s for s in stems if s in only]
    env = KERNEL_ENV
    # What a killed run (power cut, SIGKILL) left: papermill's temporary notebooks and dependency
    # records. The caller holds the build lock, so no live run owns them.
    for leftover in [*out_dir.glob(".*.tmp.ipynb"), *out_dir.glob(".*.dependencies.json")]:
        leftover.unlink(missing_ok=True)
    runs = []
    for stem in stems:
        target, stamp = out_dir / f"{stem}.ipynb", out_dir / f"{stem}.json"
        why = "forced" if force else stale(root, stem, params, out_dir)
        if why is None:
            recorded = json.loads(stamp.read_text())
            if recorded.get("source") == _source_hash(root, stem):
                runs.append(ChapterRun(stem, recorded["seconds"], "up to date"))
                continue
            start = time.perf_counter()
            merge_prose(root / "notebooks" / f"{stem}.ipynb", target, target)
            store.write_text(stamp, json.dumps({**recorded, "source": _source_hash(root, stem)}, indent=1))
            runs.append(ChapterRun(stem, time.perf_counter() - start, "prose updated"))
            continue
        log(f"executing {stem} ({why}; {', '.join(f'{k}={v!r}' for k, v in params.items())}) ...")
        # What is about to run: its code, prose and the meaning of every module it may import.
        key, source = code_key(root, stem, params), _source_hash(root, stem)
        meanings = {m: module_fingerprint(m) for m in _package_modules()}
        failed = out_dir / f"{stem}.failed.ipynb"
        record = out_dir / f".{stem}.dependencies.json"
        record.unlink(missing_ok=True)
        start = time.perf_counter()
        old_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env, LATENTBOOK_DEPENDENCIES=str(record))
        progress = CellProgress(stem, root / "book" / f"{stem}.md")
        try:
            # papermill writes into a temporary file that becomes the executed notebook only when the
            # chapter ends well: an interrupted or failed run never leaves a half-executed chapter.
            with store.atomic_path(target) as partial, progress:
                try:
                    run_notebook(root / "notebooks" / f"{stem}.ipynb", partial, params, cwd=out_dir,
                                 progress=progress)
                except Exception as exc:
                    if partial.is_file():
                        shutil.copyfile(partial, failed)
                    raise BuildError(failure_message(stem, exc, progress, failed)) from exc
        finally:
            if sys.exc_info()[0] is not None:
                record.unlink(missing_ok=True)
            os.environ.pop("LATENTBOOK_DEPENDENCIES", None)
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        seconds = time.perf_counter() - start
        try:
            used = json.loads(record.read_text())
        except (OSError, ValueError):  # a chapter that never called start(): it depends on everything
            used = {"modules": _package_modules(), "entries": {}}
        record.unlink(missing_ok=True)
        failed.unlink(missing_ok=True)
        store.write_text(stamp, json.dumps({
            "code": key, "source": source, "params": params,
            "seconds": seconds, "modules": {m: meanings.get(m) or module_fingerprint(m) for m in used["modules"]},
            "entries": used["entries"]}, indent=1))
        runs.append(ChapterRun(stem, seconds, "executed"))
        log(f"executed {stem}: {progress.total} code cells in {seconds:.1f} s")
    return runs


# --------------------------------------------------------------------------------------------
# 3. Site


def vendor_assets(root: Path, log=print) -> Path:
    """Fetch the pinned front-end packages from npm into ``_assets/vendor`` (only when missing)."""
    vendor = root / "_assets" / "vendor"
    for name, (spec, integrity) in VENDOR.items():
        target = vendor / name
        if (target / ".integrity").is_file() and (target / ".integrity").read_text() == integrity:
            continue
        if shutil.which("npm") is None:
            raise BuildError(f"npm is needed once to fetch {spec} (install Node.js and npm)")
        log(f"fetching {spec} from npm ...")
        vendor.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=vendor) as tmp:
            proc = subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=300)
            tgz = next(Path(tmp).glob("*.tgz"), None)
            if proc.returncode or tgz is None:
                raise BuildError(f"`npm pack {spec}` failed: {proc.stderr.strip()[-500:]}")
            algo, digest = integrity.split("-", 1)
            actual = base64.b64encode(hashlib.new(algo, tgz.read_bytes()).digest()).decode()
            if actual != digest:
                raise BuildError(f"{spec}: integrity mismatch (expected {integrity}, got {algo}-{actual})")
            unpacked = Path(tmp) / "unpacked"
            with tarfile.open(tgz) as tar:
                tar.extractall(unpacked, filter="data")
            package = unpacked / "package"
            for junk in package.rglob("*.map"):  # source maps: large and never requested
                junk.unlink()
            (package / ".integrity").write_text(integrity)
            if target.exists():
                shutil.rmtree(target)
            os.replace(package, target)
    return vendor


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` unless they are equal already; True if it copied."""
    # Keep unchanged files untouched so Sphinx's incremental build sees nothing new.
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return True


def _write_if_changed(text: str, dst: Path) -> bool:
    if dst.is_file() and dst.read_text() == text:
        return False
    store.write_text(dst, text)
    return True


def site_config(root: Path, *, student: bool = False) -> str:
    """``_config.yml`` as the site is built with it: the Colab buttons open the Colab edition, on the
    repository's ``colab`` branch (``notebooks/``, or ``student/notebooks/`` for the student edition)."""
    import yaml

    from latentbook import colab

    config = yaml.safe_load((root / "_config.yml").read_text())
    if (config.get("repository") or {}).get("url"):
        config["repository"]["branch"] = colab.COLAB_BRANCH
        config["repository"]["path_to_book"] = "student" if student else ""
    if student:
        config["title"] += " (student edition)"
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def build_site(root: Path, executed: Path, out: Path, log=print, *, student: bool = False) -> Path:
    """Jupyter Book 1 (through Sphinx) from the executed notebooks; warnings are errors. The student
    edition leaves out every solution and quiz answer (:func:`latentbook.colab.without_solutions`)."""
    import nbformat
    import yaml

    from latentbook import colab

    src = out / "src"
    html = out / "html"
    src.mkdir(parents=True, exist_ok=True)
    _write_if_changed(site_config(root, student=student), src / "_config.yml")
    _copy_if_changed(root / "_toc.yml", src / "_toc.yml")
    # the bibliography (references.bib, named by _config.yml's bibtex_bibfiles) reaches the site only here;
    # a changed entry rewrites every page below (-a): a page that only cites it would keep the old text
    bib_changed = False
    for bib in yaml.safe_load((root / "_config.yml").read_text()).get("bibtex_bibfiles") or []:
        if not (root / bib).is_file():
            raise BuildError(f"_config.yml's bibtex_bibfiles names {bib}, which {root} lacks")
        bib_changed |= _copy_if_changed(root / bib, src / bib)
    missing = [stem for stem in chapters(root) if not (executed / f"{stem}.ipynb").is_file()]
    if missing:
        raise BuildError(f"not executed yet in {executed}: {missing} (build without --chapters, or use --no-site)")
    for stem in chapters(root):
        if student:
            nb = nbformat.read(executed / f"{stem}.ipynb", as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    cell.source = colab.without_solutions(cell.source)
            _write_if_changed(nbformat.writes(nb), src / "notebooks" / f"{stem}.ipynb")
        else:
            _copy_if_changed(executed / f"{stem}.ipynb", src / "notebooks" / f"{stem}.ipynb")
    if (root / "book" / "images").is_dir():
        for img in (root / "book" / "images").rglob("*"):
            if img.is_file():
                _copy_if_changed(img, src / "notebooks" / "images" / img.relative_to(root / "book" / "images"))
    assets = src / "assets"
    assets.mkdir(exist_ok=True)
    changed = bib_changed
    for shim in [*(root / "_assets").glob("*.js"), *(root / "_assets").glob("*.css")]:  # ours, beside the vendored
        changed |= _copy_if_changed(shim, assets / shim.name)
    for exported in sorted((executed / "explorer").glob("*.bin")):  # decoders of the in-browser explorers
        changed |= _copy_if_changed(exported, assets / "explorer" / exported.name)
    # the packages the site loads, linked (Sphinx copies them); marked and KaTeX serve only the Colab check
    vendor = vendor_assets(root, log=log)
    site_vendor = assets / "vendor"
    if site_vendor.is_symlink():
        site_vendor.unlink()  # a build before marked and KaTeX linked the whole folder
    for name in SITE_VENDOR:
        link = site_vendor / name
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(vendor / name, target_is_directory=True)
    jb = [str(Path(sys.executable).with_name("jupyter-book"))]
    proc = subprocess.run([*jb, "config", "sphinx", str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise BuildError(f"jupyter-book config sphinx failed:\n{proc.stdout}\n{proc.stderr}")
    # sphinx-thebe (live code via an external server) adds its script once more on every page it
    # renders, a JavaScript error from the second page on; the book does not use it, so drop it.
    conf = src / "conf.py"
    conf.write_text(conf.read_text() + '\nextensions = [e for e in extensions if e != "sphinx_thebe"]\n')
    # Sphinx copies extra files only when some page is out of date, so a changed stylesheet, script or
    # exported decoder alone would never reach the site: then write every page (-a).
    rewrite = ["-a"] if changed else []
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", *rewrite,
         "-d", str(out / "doctrees"), str(src), str(html)],
        capture_output=True, text=True,
    )
    if proc.returncode:
        raise BuildError(f"the site build failed (warnings are errors):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return html


def export_models(root: Path, executed: Path, dest: Path, *, stems: list[str] | None = None, log=print) -> dict:
    """Copy every store entry the executed chapters used into ``dest`` (the site's ``models/``) with
    ``manifest.json``: each entry's key, configuration, size and SHA-256. Learners and instructors
    fetch from there (:func:`latentbook.store.get`) the very weights that made the published pages."""
    from latentbook import __version__

    used: dict[str, str] = {}
    for stem in stems or chapters(root):
        used.update(json.loads((executed / f"{stem}.json").read_text()).get("entries", {}))
    where = store.folder()
    entries = {}
    for key, checksum in sorted(used.items()):
        src = where / f"{key}.pt"
        try:
            description = json.loads((where / f"{key}.json").read_text())
        except (OSError, ValueError):
            description = {}
        if not src.is_file() or description.get("checksum") != checksum:
            raise BuildError(f"store entry {key} that the book used is missing from {where} or changed; "
                             "execute the chapters again (make book)")
        _copy_if_changed(src, dest / f"{key}.pt")
        entries[key] = {"sha256": store.file_sha256(dest / f"{key}.pt"), "bytes": src.stat().st_size,
                        "checksum": checksum, "config": description["config"]}
    for old in dest.glob("*.pt"):
        if old.stem not in entries:
            old.unlink()
    manifest = {"format": store.FORMAT, "latentbook": __version__, "entries": entries}
    store.write_text(dest / store.MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    log(f"exported {len(entries)} store entries ({sum(e['bytes'] for e in entries.values()) / 1e6:.1f} MB) to {dest}")
    return manifest


def write_colab(root: Path, executed: Path, out: Path, mode: str, log=print) -> Path:
    """The Colab edition of every chapter (:mod:`latentbook.colab`), executed in ``mode``, into
    ``out/notebooks`` and the student edition into ``out/student/notebooks``: the layout of the
    repository's ``colab`` branch."""
    from latentbook import colab

    release = colab.release_from_checkout(root, mode)
    if not release.repository:
        log("no repository.url in _config.yml: no Colab edition")
        return out
    stems = chapters(root)
    colab.write(root, executed, out / "notebooks", release, stems=stems)
    colab.write(root, executed, out / "student" / "notebooks", release, stems=stems, student=True)
    log(f"wrote the Colab edition of {len(stems)} chapters (and its student edition) to {out}")
    return out


def pretrain(root: Path, params: dict, executed: Path, *, only: list[str] | None, force: bool, jobs: int | None,
             log=print) -> list[ChapterRun]:
    """Train the models (and compute the stored evaluations) of the chapters that are about to execute, ``jobs``
    at a time in worker processes, so that the chapters find them stored; ``[]`` when there is nothing to do."""
    from latentbook import chapter, zoo
    from latentbook.runmode import resolve_device

    if jobs is None:
        jobs = zoo.default_jobs(resolve_device(params["DEVICE"])) if params["MODE"] == "full" else 1
    stems = [s for s in chapters(root) if only is None or s in only]
    due = [s for s in stems if force or stale(root, s, params, executed) is not None]
    if jobs <= 1 or not zoo.models_for(due):
        return []
    start = time.perf_counter()
    run = chapter.start(params["MODE"], params["DEVICE"], params["DATASET"], params["SEED"], quiet=True)
    zoo.warm(run, chapters=due, jobs=jobs, log=log)
    return [ChapterRun(f"(models, {jobs} at a time)", time.perf_counter() - start, "trained")]


def build(root: Path | None = None, params: dict | None = None, *, only: list[str] | None = None,
          force: bool = False, site: bool = True, student: bool = False, jobs: int | None = None,
          log=print) -> tuple[Path | None, list[ChapterRun]]:
    """Check, execute and build; returns the site folder and each chapter's timing. With ``site``:
    the website, its published models and the Colab edition (``_build/<mode>/colab``); with
    ``student`` also the student edition of the site (``_build/<mode>-student/html``).

    ``jobs``: before executing, train the models of the chapters about to run this many at a time
    (:func:`latentbook.zoo.warm`); None: :func:`latentbook.zoo.default_jobs` in full mode, 1 (no such
    step) in smoke mode, whose models train in seconds, less than a worker process takes to start."""
    root = root or project_root()
    params = {**DEFAULT_PARAMS, **(params or {})}
    from latentbook.runmode import get_mode

    get_mode(params["MODE"])  # a nonsense mode fails here, before any chapter runs
    problems = check_pairs(root)
    if problems:
        raise BuildError("the chapters and their notebooks are out of step:\n  " + "\n  ".join(problems))
    mode = params["MODE"]
    executed = root / "_executed" / mode
    # One build at a time per checkout: a second waits rather than write the same notebooks and site.
    with store.lock(root / "_executed" / ".build.lock",
                    waiting="another build is running in this checkout ({holder}); waiting for it to finish",
                    log=log):
        runs = pretrain(root, params, executed, only=only, force=force, jobs=jobs, log=log)
        runs += execute(root, params, executed, only=only, force=force, log=log)
        html = None
        if site:
            start = time.perf_counter()
            html = build_site(root, executed, root / "_build" / mode, log=log)
            export_models(root, executed, html / "models", log=log)
            write_colab(root, executed, root / "_build" / mode / "colab", mode, log=log)
            if student:
                build_site(root, executed, root / "_build" / f"{mode}-student", log=log, student=True)
            runs.append(ChapterRun("(site build)", time.perf_counter() - start, "built"))
    return html, runs


def timing_table(runs: list[ChapterRun]) -> str:
    width = max([len(r.stem) for r in runs] + [7])
    lines = [f"{'chapter':<{width}}  {'seconds':>8}  status", f"{'-' * width}  {'-' * 8}  {'-' * 10}"]
    for r in runs:
        lines.append(f"{r.stem:<{width}}  {r.seconds:8.1f}  {r.status}")
    return "\n".join(lines)

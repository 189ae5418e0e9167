"""A Colab-like Python environment for the tests (fixtures in conftest.py): a venv holding Colab's
recorded packages (``tests/colab_preinstalled.txt``), a kernel spec for it, and latentbook installed into
it by the Colab edition's own install cell, from a git repository on disk standing in for GitHub."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "tests" / "colab_preinstalled.txt"
PACKAGE_FILES = ["pyproject.toml", "README.md", "latentbook"]
KERNEL = "colab-fresh"


def name(dist: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def pins() -> dict[str, str]:
    """Colab's recorded versions: ``{name: version}``."""
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            dist, version = line.split("==")
            found[name(dist)] = version
    return found


def freeze(python: Path) -> dict[str, str]:
    """``{name: version}`` of what the venv of ``python`` holds (a direct URL for a VCS install)."""
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                         check=True, cwd=python.parent).stdout
    versions = {}
    for line in out.splitlines():
        if "==" in line:
            dist, version = line.split("==", 1)
        elif " @ " in line:
            dist, version = line.split(" @ ", 1)
        else:
            continue
        versions[name(dist)] = version.strip()
    return versions


def pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _link_torch(python: Path) -> None:
    """Hard-link this interpreter's torch, torchvision and their CUDA libraries (5 GB, the same wheels
    the requirements name) into the venv of ``python``, where the versions are the pinned ones and the
    folders share a file system: ``pip install -r`` then finds them installed, still resolves their
    requirements, and writes the rest only (about half the time). Otherwise pip installs them too."""
    from importlib import metadata

    pinned = pins()
    if (pinned["torch"], pinned["torchvision"]) != (metadata.version("torch"), metadata.version("torchvision")):
        return
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dists = [d for d in metadata.distributions()
             if name(d.metadata["Name"]) in ("torch", "torchvision", "triton")
             or name(d.metadata["Name"]).startswith(("nvidia-", "cuda-"))]
    files = [(Path(d.locate_file(f)).resolve(), site / str(f)) for d in dists for f in d.files or []
             if Path(str(f)).parts[0] != ".." and Path(str(f)).suffix != ".pyc"]  # not bin/, no bytecode
    files = [(src, dst) for src, dst in files if src.is_file()]
    if not files or files[0][0].stat().st_dev != site.stat().st_dev:
        return
    for src, dst in files:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)


def make_venv(base: Path) -> tuple[Path, Path]:
    """``(python, jupyter_path)``: a venv in ``base`` with Colab's recorded packages, and the folder
    holding its kernel spec (:data:`KERNEL`)."""
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _link_torch(python)
    pip(python, f"pip=={pins()['pip']}")  # first Colab's pip, which then installs the rest
    pip(python, "-r", str(REQUIREMENTS))
    jupyter = base / "jupyter"
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(jupyter), "--name", KERNEL],
                   check=True, capture_output=True)
    return python, jupyter / "share" / "jupyter"


def commit_folder(folder: Path, message: str) -> str:
    """Make ``folder`` a git repository whose one commit (on ``main``) holds its files; that commit."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", message]):
        subprocess.run([*git, *args], cwd=folder, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip()


def release_repo(base: Path) -> tuple[str, str]:
    """``(url, commit)``: the package's own files as one commit of a git repository in ``base``."""
    repo = base / "repository"
    repo.mkdir()
    for item in PACKAGE_FILES:
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy2)(ROOT / item, repo / item)
    shutil.rmtree(repo / "latentbook" / "__pycache__", ignore_errors=True)
    return f"file://{repo}", commit_folder(repo, "release")


def run_install_cell(source: str, jupyter_path: Path, folder: Path) -> str:
    """Execute the install cell ``source`` alone on the Colab-like kernel; what it printed."""
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), folder / "install.ipynb")
    env = {**os.environ, "JUPYTER_PATH": str(jupyter_path), "HOME": str(folder)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from latentbook import build; "
         f"build.run_notebook(Path(sys.argv[1]), Path(sys.argv[2]), {{}}, cwd=Path(sys.argv[3]), kernel_name={KERNEL!r})",
         str(folder / "install.ipynb"), str(folder / "out.ipynb"), str(folder)],
        env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = nbformat.read(folder / "out.ipynb", as_version=4).cells[0]
    return "".join(o.get("text", "") for o in out.outputs if o.get("output_type") == "stream")

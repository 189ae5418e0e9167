"""The project's own consistency: chapter pairs, the parameters cell, Colab cells, environment files."""

import json
import re
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml

from latentbook import build

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)


def test_every_chapter_is_paired_and_output_free():
    assert build.check_pairs(ROOT) == []


def test_check_pairs_catches_drift_and_outputs(tmp_path):
    for name in ("_toc.yml", "_config.yml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "book").mkdir()
    (tmp_path / "notebooks").mkdir()
    for stem in CHAPTERS:
        (tmp_path / "book" / f"{stem}.md").write_text((ROOT / "book" / f"{stem}.md").read_text())
    build.sync(tmp_path)
    assert build.check_pairs(tmp_path) == []
    # an edited source, a notebook with outputs, a chapter without its pair
    md = tmp_path / "book" / f"{CHAPTERS[0]}.md"
    md.write_text(md.read_text() + "\n```{code-cell} ipython3\nprint('new')\n```\n")
    nb_path = tmp_path / "notebooks" / f"{CHAPTERS[1]}.ipynb"
    nb = json.loads(nb_path.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    nb_path.write_text(json.dumps(nb))
    (tmp_path / "book" / "orphan.md").write_text("# orphan\n")
    problems = "\n".join(build.check_pairs(tmp_path))
    assert f"book/{CHAPTERS[0]}.md and notebooks/{CHAPTERS[0]}.ipynb differ" in problems
    assert f"notebooks/{CHAPTERS[1]}.ipynb carries outputs" in problems
    assert "book/orphan.md has no paired notebooks/orphan.ipynb" in problems


def test_sync_is_deterministic(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book" / "data.md").write_text((ROOT / "book" / "data.md").read_text())
    build.sync(tmp_path)
    first = (tmp_path / "notebooks" / "data.ipynb").read_bytes()
    build.sync(tmp_path)
    assert (tmp_path / "notebooks" / "data.ipynb").read_bytes() == first
    assert first == (ROOT / "notebooks" / "data.ipynb").read_bytes()


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_template(stem):
    """One `parameters` cell of plain literals first, then `start(...)`. No install cell: the Colab
    edition (latentbook.colab) writes its own, pinned to the commit it was built from."""
    nb = jupytext.read(ROOT / "book" / f"{stem}.md")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any("pip install" in c.source for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0]
    # hidden on the site, where papermill's injected cell right after it shows the values actually used
    assert "remove-cell" in params[0].metadata["tags"]
    names = {}
    for line in params[0].source.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, value = (s.strip() for s in line.split("=", 1))
            names[name] = eval(value, {})  # plain literals only: eval of anything else fails here
    assert set(names) == set(build.DEFAULT_PARAMS), names
    assert names == build.DEFAULT_PARAMS
    assert "start(MODE, DEVICE, DATASET, SEED)" in code[1].source
    text = (ROOT / "book" / f"{stem}.md").read_text()
    assert "Learning goals" in text and "## Summary" in text and "## References" in text
    if stem != "preface":
        assert text.count("```{exercise}") >= 2 and text.count("```{solution}") >= 2


def test_no_helper_is_pasted_into_a_chapter():
    """Chapters call latentbook; a `def` in a chapter is allowed only for a from-scratch illustration."""
    for stem in CHAPTERS:
        source = (ROOT / "book" / f"{stem}.md").read_text()
        for name in re.findall(r"^def (\w+)", source, flags=re.M):
            assert not any(name == f for f in ("load", "fit", "train", "image_grid")), (stem, name)


def _requirement_set(reqs):
    return {re.sub(r"\s+", "", r) for r in reqs}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in ("book", "test"):
        wanted |= set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _requirement_set(r for r in pip if not r.startswith("-e")) == _requirement_set(wanted)
    assert "-e ." in pip
    assert any(str(d).startswith("python=") for d in env["dependencies"])


def test_pyproject_never_pins_torch():
    """Lower bounds only, so Colab keeps the torch it ships instead of downloading gigabytes."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        if dep.startswith(("torch", "torchvision")):
            assert ">=" in dep and "==" not in dep and "<" not in dep, dep


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    assert re.search(r"^make test$", ci, flags=re.M)


def test_toc_lists_every_chapter_once():
    stems = sorted(p.stem for p in (ROOT / "book").glob("*.md"))
    assert sorted(CHAPTERS) == stems
    assert len(set(CHAPTERS)) == len(CHAPTERS)


@pytest.mark.parametrize("stem", CHAPTERS)
def test_code_fits_the_page(stem):
    """Code lines the reader sees fit the page's code column (about 80 characters) without scrolling."""
    nb = jupytext.read(ROOT / "book" / f"{stem}.md")
    for cell in nb.cells:
        if cell.cell_type == "code" and "remove-cell" not in cell.metadata.get("tags", []):
            for line in cell.source.splitlines():
                assert len(line) <= 80, f"{stem}: {len(line)} characters: {line}"


def test_every_chapter_tags_the_cells_with_its_key_numbers():
    """nbval compares the cells tagged ``nbval-check-output`` (tests/test_book.py); every chapter that
    prints or glues a number has some, and each tagged cell does print or glue."""
    import jupytext

    from conftest import NBVAL_TAG

    for md in sorted((ROOT / "book").glob("*.md")):
        code = [c for c in jupytext.read(md).cells if c.cell_type == "code"]
        tagged = [c for c in code if NBVAL_TAG in c.metadata.get("tags", [])]
        assert tagged, f"{md.name}: no cell tagged {NBVAL_TAG}"
        for c in tagged:
            assert "print(" in c.source or "glue(" in c.source, (md.name, c.source[:200])


def test_the_nbval_sanitizer_masks_the_moment_and_nothing_else():
    """tests/nbval_sanitize.cfg, applied as nbval applies it (in file order): timings and temporary paths go,
    the numbers of the computation stay."""
    from nbval.plugin import get_sanitize_patterns

    from conftest import NBVAL_SANITIZE

    text = ("parameters: MLP 1,234, conv 5,678\nseconds per epoch: MLP 7.1, conv 7.3\nfitted in 12.5 s\n"
            "test ELBO -101.23, MSE 0.0123\nsaved to /tmp/pytest-of-root/x/out.bin\n")
    for regex, replace in get_sanitize_patterns(NBVAL_SANITIZE.read_text()):
        text = re.sub(regex, replace, text)
    assert text == ("parameters: MLP 1,234, conv 5,678\nTIMING\nfitted in DURATION\n"
                    "test ELBO -101.23, MSE 0.0123\nsaved to PATH\n")


@pytest.mark.parametrize("stem", CHAPTERS)
def test_no_cell_ends_by_showing_a_claims_value(stem):
    """``claim`` returns True: as a cell's last line it would print a stray ``True`` under the
    "checked: ..." line on the page. End such a cell with ``claim(...);``."""
    import ast

    for cell in jupytext.read(ROOT / "book" / f"{stem}.md").cells:
        if cell.cell_type != "code" or not cell.source.strip() or cell.source.lstrip().startswith("%"):
            continue
        last = ast.parse(cell.source).body[-1]
        if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                and getattr(last.value.func, "id", None) == "claim"):
            assert cell.source.rstrip().endswith(";"), f"{stem}: a cell ends with claim(...) without ';'"

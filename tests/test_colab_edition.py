"""The Colab edition (latentbook.colab), the student edition and ``publish``: MyST becomes Markdown that
Colab renders, solutions fold (or go), the install cell names the built commit, and publishing refuses
placeholder addresses. The rendering itself, in Chromium, is checked in tests/test_colab_render.py."""

import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

import colab_env
from latentbook import build, colab, publish

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)
RELEASE = colab.Release("https://github.com/someone/latentbook", "0123456789abcdef" * 2 + "01234567",
                        "https://someone.github.io/latentbook/models/")
RAW_MYST = re.compile(r"\{glue|```\{|:::\{|\{prf:|\{ref\}|\{doc\}|^:label:|^:class:", re.M)


def _convert(text: str, values=None, labels=None, student=False) -> str:
    labels = labels or {"thm-a": ("Theorem", "Eckart–Young", "pca")}
    titles = {"pca": "PCA", "vae": "VAEs"}
    return colab._Converter("vae", values or {}, labels, titles, RELEASE, student).markdown(text)


def test_glued_numbers_become_the_published_values_marked():
    out = _convert("The error is {glue:text}`mse` nats.", values={"mse": "0.0123"})
    assert out == f"The error is 0.0123{colab.PUBLISHED} nats."
    with pytest.raises(colab.ColabError, match="glues 'nope'"):
        _convert("{glue:text}`nope`")


def test_references_name_the_statement_and_link_its_chapter():
    out = _convert("By {prf:ref}`thm-a`, done.")
    assert out == f"By *Theorem (Eckart–Young)* in [PCA]({RELEASE.colab_url('pca')}), done."
    assert RELEASE.colab_url("pca") == \
        "https://colab.research.google.com/github/someone/latentbook/blob/colab/notebooks/pca.ipynb"
    with pytest.raises(colab.ColabError, match="unknown label"):
        _convert("{prf:ref}`thm-missing`")
    with pytest.raises(colab.ColabError, match="role"):
        _convert("see {doc}`pca`")


def test_theorems_proofs_and_admonitions_become_markdown():
    text = """:::{prf:theorem} Eckart–Young
:label: thm-a

No rank-$k$ matrix is closer.
:::

:::{prf:proof}
Write it out.

$$
a = b
$$
:::

:::{admonition} Learning goals
:class: tip
You can
- do this.
:::
"""
    out = _convert(text)
    assert "**Theorem (Eckart–Young).** No rank-$k$ matrix is closer." in out
    assert "*Proof.* Write it out." in out and out.index("$$\na = b\n$$") < out.index("∎")
    assert "> **Learning goals**\n>\n> You can\n> - do this." in out
    assert not RAW_MYST.search(out), out


def test_quizzes_and_solutions_fold_and_the_student_edition_drops_them():
    text = """```{exercise}
:label: ex-1

Compute `x`.
```

````{solution} ex-1
:class: dropdown

Like this:

```python
x = 1
```
````

:::{admonition} Why does `MODE` matter?
:class: dropdown

Because *smoke* is a subset.
:::
"""
    out = _convert(text)
    assert "**Exercise 1.** Compute `x`." in out
    assert "<details>\n<summary><b>Solution to Exercise 1</b></summary>\n\nLike this:\n\n```python\nx = 1\n```\n\n</details>" in out
    assert "<summary><b>Why does <code>MODE</code> matter?</b></summary>\n\nBecause *smoke* is a subset." in out
    student = _convert(text, student=True)
    assert "x = 1" not in student and "subset" not in student and "**Question.** Why does `MODE` matter?" in student
    myst = colab.without_solutions(text)  # the same for the student site's sources
    assert "x = 1" not in myst and "subset" not in myst and "Compute `x`." in myst


def test_what_it_cannot_render_is_an_error_not_raw_text():
    with pytest.raises(colab.ColabError, match="does not know the directive"):
        _convert(":::{margin}\nx\n:::")
    with pytest.raises(colab.ColabError, match="never closed"):
        _convert(":::{prf:proof}\nx\n")
    with pytest.raises(colab.ColabError, match="not an exercise before it"):
        _convert("```{solution} ex-9\nx\n```")


def _solution_fragments() -> dict[str, list[str]]:
    """Per chapter, a plain-text fragment (30+ characters of words) of every solution and quiz answer."""
    found = {}
    for stem in CHAPTERS:
        frags = []
        for item in colab._parse((ROOT / "book" / f"{stem}.md").read_text().splitlines()):
            if isinstance(item, colab._Directive) and (item.name == "solution" or (
                    item.name == "admonition" and "dropdown" in item.options.get("class", ""))):
                runs = re.findall(r"[A-Za-z][A-Za-z ,]{29,}", "\n".join(item.body).replace("\n", " "))
                assert runs, (stem, item.body)
                frags.append(max(runs, key=len).strip())
        found[stem] = frags
    assert sum(map(len, found.values())) >= 60  # 30 solutions and 30-odd quiz answers
    return found


def _text(path: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text()))


@pytest.mark.slow
def test_the_colab_edition_of_every_chapter(smoke_build):
    folder = ROOT / "_build" / "smoke" / "colab" / "notebooks"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    fragments = _solution_fragments()
    for stem in CHAPTERS:
        nb = nbformat.read(folder / f"{stem}.ipynb", as_version=4)
        md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert not RAW_MYST.search(md), (stem, RAW_MYST.search(md))
        assert nb.metadata["accelerator"] == "GPU"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert f"latentbook @ git+" in code[0].source and f"@{commit}" in code[0].source and "%pip install" in code[0].source
        assert "parameters" in code[1].metadata["tags"]
        settings = nb.cells[nb.cells.index(code[1]) - 1].source
        assert "`MODE = \"smoke\"`" in settings and "2-core CPU" in settings and "GPU" in settings
        source = (ROOT / "book" / f"{stem}.md").read_text()
        assert md.count("<summary><b>Solution to Exercise") == source.count("{solution}")
        assert md.count(colab.PUBLISHED) == source.count("{glue:text}")
        flat = re.sub(r"\s+", " ", md)
        for fragment in fragments[stem]:  # every answer is there, inside a <details>
            at = flat.index(fragment)
            assert flat.rfind("<details>", 0, at) > flat.rfind("</details>", 0, at), (stem, fragment)
        assert not any(o.get("output_type") == "display_data" and "application/vnd.jupyter.widget-view+json" in o["data"]
                       for c in code for o in c.get("outputs", []))


@pytest.mark.slow
def test_the_student_edition_contains_no_solution_text(smoke_build):
    fragments = _solution_fragments()
    student_nbs = ROOT / "_build" / "smoke" / "colab" / "student" / "notebooks"
    student_site = ROOT / "_build" / "smoke-student" / "html"
    site = ROOT / "_build" / "smoke" / "html"
    pages = list(student_site.rglob("*.html"))
    student_text = " ".join(_text(p) for p in pages) + " ".join(p.read_text() for p in student_site.rglob("*.js"))
    for stem, frags in fragments.items():
        published_page, colab_nb = _text(site / "notebooks" / f"{stem}.html"), (student_nbs / f"{stem}.ipynb").read_text()
        for fragment in frags:
            assert fragment in published_page, (stem, fragment)  # the check can fail: the full edition has it
            assert fragment not in student_text, (stem, fragment)
            assert json.dumps(fragment)[1:-1] not in colab_nb, (stem, fragment)
        assert "(student edition)" in (student_site / "notebooks" / f"{stem}.html").read_text()
    assert "blob/colab/student/notebooks/vae.ipynb" in (student_site / "notebooks" / "vae.html").read_text()
    assert "blob/colab/notebooks/vae.ipynb" in (site / "notebooks" / "vae.html").read_text()


# --------------------------------------------------------------------------------------------
# publish


def _repo(tmp_path: Path, config: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "_config.yml").write_text(config)
    colab_env.commit_folder(repo, "book")
    return repo


def _config(repository: str, models_url: str) -> str:
    return f"repository:\n  url: {repository}\nlatentbook:\n  models_url: {models_url}\n"


def test_publish_refuses_the_shipped_placeholders_and_names_what_to_set(tmp_path, monkeypatch):
    shipped = (ROOT / "_config.yml").read_text()
    repo = _repo(tmp_path, shipped)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # github.com unreachable whatever the network: a dead host
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "url.file:///nonexistent/.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://github.com/")
    found = publish.problems(repo)
    assert len(found) == 2, found
    assert found[0].startswith("latentbook.models_url in _config.yml is a placeholder")
    assert found[1].startswith("repository.url in _config.yml (https://github.com/") and "cannot be read" in found[1]
    lines = []
    assert publish.publish(repo, log=lines.append) == 2
    assert lines[-1] == "nothing was built or committed" and not (repo / "_build").exists()


def test_publish_accepts_real_addresses_once_the_commit_is_pushed(tmp_path, monkeypatch):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # https://github.com/owner/ is this bare repository's folder
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.file://{tmp_path}/.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://github.com/owner/")
    repo = _repo(tmp_path, _config("https://github.com/owner/remote.git", "https://owner.github.io/book/models/"))
    found = publish.problems(repo)
    assert len(found) == 1 and "is not a branch or tag of" in found[0] and "push it first" in found[0], found
    subprocess.run(["git", "push", "-q", str(bare), "HEAD:main"], cwd=repo, check=True, capture_output=True)
    assert publish.problems(repo) == []
    (repo / "_config.yml").write_text(_config("https://github.com/owner/remote.git", "https://example.com/models/"))
    found = publish.problems(repo)
    assert any("uncommitted changes" in p for p in found) and any("placeholder" in p for p in found)


def test_the_colab_branch_is_committed_without_touching_the_checkout(tmp_path, monkeypatch):
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):  # a machine without a git identity (CI) too
        monkeypatch.setenv(var, "t")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "t@t")
    repo = _repo(tmp_path, _config("https://github.com/o/r", "https://o.github.io/r/models/"))
    folder = tmp_path / "colab"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "pca.ipynb").write_text("{}")
    first = publish.commit_branch(repo, folder, message="one")
    (folder / "notebooks" / "vae.ipynb").write_text("{}")
    second = publish.commit_branch(repo, folder, message="two")
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", "colab"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    assert files == ["notebooks/pca.ipynb", "notebooks/vae.ipynb"]
    parent = subprocess.run(["git", "rev-parse", "colab^"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert parent == first and second != first
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert status == "" and sorted(p.name for p in repo.iterdir()) == [".git", "_config.yml"]

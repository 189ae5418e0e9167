"""The Colab edition (latentbook.colab), the student edition and ``publish``: MyST becomes Markdown that
Colab renders, solutions fold (or go), the install cell names the built commit, and publishing refuses
placeholder addresses. The rendering itself, in Chromium, is checked in tests/test_colab_render.py."""

import html
import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

import colab_env
from latentbook import build, citations, colab, publish

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)
RELEASE = colab.Release("https://github.com/someone/latentbook", "0123456789abcdef" * 2 + "01234567",
                        "https://someone.github.io/latentbook/models/")
RAW_MYST = re.compile(r"\{glue|```\{|:::\{|\{prf:|\{ref\}|\{doc\}|^:label:|^:class:", re.M)


BIB = citations.load(ROOT)


def _convert(text: str, values=None, labels=None, student=False, **index) -> str:
    labels = labels or {"thm-a": ("Theorem", "Eckart–Young", "pca")}
    titles = {"pca": "PCA", "vae": "VAEs", "background": "Background"}
    return colab._Converter("vae", values or {}, labels, titles, RELEASE, student, bib=BIB, **index).markdown(text)


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
        _convert("see {eq}`pca`")


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


def test_citations_read_as_on_the_site_and_the_bibliography_lists_them():
    assert _convert("As {cite:t}`kingma2014auto` showed.") == "As Kingma and Welling (2014) showed."
    assert _convert("A bound {cite:p}`kingma2014auto,burda2016importance`.") == \
        "A bound (Burda *et al.*, 2016; Kingma and Welling, 2014)."  # the reference list's order, as on the site
    assert _convert("{cite:t}`burda2016importance{Table 1}`, {cite:p}`{LoRA;}hu2022lora`") == \
        "Burda *et al.* (2016, Table 1), (LoRA; Hu *et al.*, 2022)"
    assert _convert("{cite:t}`golub2013matrix`, {cite:t}`oord2017neural`, {cite}`kish1965survey`") == \
        "Golub and Van\u00a0Loan (2013), van\u00a0den Oord *et al.* (2017), (Kish, 1965)"  # as on the site
    with pytest.raises(colab.ColabError, match="no entry 'nobody2020'"):
        _convert("{cite:t}`nobody2020`")
    with pytest.raises(colab.ColabError, match="unknown citation role"):
        _convert("{cite:zz}`kingma2014auto`")
    text = """{cite:p}`kingma2014auto` and {cite:t}`burda2016importance`.

## References

```{bibliography}
:filter: docname in docnames

kish1965survey
```
"""
    out = _convert(text)
    refs = out.split("## References")[1].strip().replace("\u00a0", " ").splitlines()  # ties: no-break spaces
    assert refs == [  # sorted by author, as the site sorts them; the listed key too
        "- Y. Burda, R. Grosse, and R. Salakhutdinov (2016). Importance weighted autoencoders. In *International "
        "Conference on Learning Representations (ICLR)*. [arXiv:1509.00519](https://arxiv.org/abs/1509.00519).",
        "- D. P. Kingma and M. Welling (2014). Auto-encoding variational Bayes. In *International Conference on "
        "Learning Representations (ICLR)*. [arXiv:1312.6114](https://arxiv.org/abs/1312.6114).",
        "- L. Kish (1965). *Survey Sampling*. Wiley."]
    # the chapter's own citations, wherever they are, are what its bibliography lists (the site's filter)
    later = colab._Converter("vae", {}, {}, {}, RELEASE, False, bib=BIB, cited=["chatterjee2018sample"])
    assert later.markdown("```{bibliography}\n:filter: docname in docnames\n```").startswith("- S.\u00a0Chatterjee and P.")
    with pytest.raises(colab.ColabError, match="filter: docname in docnames"):
        _convert("```{bibliography}\n:all:\n```")
    with pytest.raises(colab.ColabError, match="no entry 'nobody2020'"):
        _convert("```{bibliography}\n:filter: docname in docnames\n\nnobody2020\n```")


def test_every_entry_of_references_bib_is_cited_and_formatted():
    cited = {k for stem in CHAPTERS for k in citations.cited((ROOT / "book" / f"{stem}.md").read_text())}
    assert cited == set(BIB.entries), set(BIB.entries) ^ cited  # no orphan entry, no missing key
    for line in citations.bibliography(BIB, sorted(cited)):  # authors (year). title. venue.
        assert re.match(r"^- \S.* \((1[89]|20)\d\d\)\. \S.+\.$", line), line


def test_the_glossary_becomes_a_definition_list_and_terms_link_to_it():
    text = """:::{glossary}
ELBO
  The evidence lower bound, $\\log p(x) - \\mathrm{KL}$, see {prf:ref}`thm-a`.

KL divergence
Relative entropy
  A divergence between two distributions.

  Not symmetric.
:::"""
    out = _convert(text)
    assert out.startswith("<dl>\n<dt><b>ELBO</b></dt>\n<dd>\n\nThe evidence lower bound, $\\log p(x) - \\mathrm{KL}$, see "
                          "*Theorem (Eckart–Young)* in [PCA]")
    assert "<dt><b>KL divergence</b></dt>\n<dt><b>Relative entropy</b></dt>\n<dd>\n\nA divergence between two " \
           "distributions.\n\nNot symmetric.\n\n</dd>\n</dl>" in out
    sorted_ = _convert(":::{glossary}\n:sorted:\n\nb\n  second\n\na\n  first\n:::")
    assert sorted_.index("<b>a</b>") < sorted_.index("<b>b</b>")
    terms = {"elbo": "background", "kl divergence": "background", "posterior": "vae"}
    out = _convert("The {term}`ELBO`, the {term}`divergence <KL divergence>`, the {term}`posterior`.", terms=terms)
    assert out == (f"The [ELBO]({RELEASE.colab_url('background')}), the "
                   f"[divergence]({RELEASE.colab_url('background')}), the posterior.")
    with pytest.raises(colab.ColabError, match="in no {glossary}"):
        _convert("{term}`entropy`", terms=terms)


def test_cross_references_point_to_the_chapters_colab_notebooks():
    targets = {"sec-iwae": ("pca", "The IWAE bound"), "sec-here": ("vae", "Posterior collapse")}
    pca = RELEASE.colab_url("pca")
    out = _convert("(sec-here)=\n## Posterior collapse\n\nSee {ref}`sec-iwae`, {ref}`the bound <sec-iwae>`, "
                   "{ref}`sec-here`, {numref}`sec-iwae`, {doc}`pca`, {doc}`the PCA chapter <pca>`, "
                   "{ref}`thm-a`, [that section](pca.md#the-iwae-bound), [it](sec-iwae), [here](#posterior-collapse), "
                   "[docs](https://example.org/a.md) and ![a](images/a.png).", targets=targets)
    assert out == ("## Posterior collapse\n\n"
                   f"See [The IWAE bound]({pca}), [the bound]({pca}), Posterior collapse, [The IWAE bound]({pca}), "
                   f"[PCA]({pca}), [the PCA chapter]({pca}), [Theorem (Eckart–Young)]({pca}), [that section]({pca}), "
                   f"[it]({pca}), [here](#posterior-collapse), [docs](https://example.org/a.md) and ![a](images/a.png).")
    assert _convert("{doc}`pca`", student=True) == f"[PCA]({RELEASE.colab_url('pca', student=True)})"
    for bad, why in (("{ref}`nowhere`", "unknown label"), ("{doc}`nowhere`", "not a chapter"),
                     ("{numref}`Fig. %s <sec-iwae>`", "no numbers")):
        with pytest.raises(colab.ColabError, match=why):
            _convert(bad, targets=targets)


def test_code_inside_a_solution_stays_code():
    head = "```{exercise}\n:label: ex-1\n\nWrite `f`.\n```\n\n"
    code = "```python\ndef f(x):\n    return {'a': x}  # {glue:text}`no` [a](pca.md) stays\n```"
    for opened, closed in (("````{solution} ex-1", "````"), (":::{solution} ex-1", ":::")):
        out = _convert(f"{head}{opened}\n:class: dropdown\n\nLike this:\n\n{code}\n{closed}\n")
        assert f"<summary><b>Solution to Exercise 1</b></summary>\n\nLike this:\n\n{code}\n\n</details>" in out
    with pytest.raises(colab.ColabError, match="longer fence"):  # MyST too would end the solution at the code's ```
        _convert(f"{head}```{{solution}} ex-1\n:class: dropdown\n\n{code}\n```\n")


def _solution_fragments() -> dict[str, list[str]]:
    """Per chapter, a plain-text fragment (30+ characters of words) of every solution and quiz answer."""
    found = {}
    for stem in CHAPTERS:
        frags = []
        for item in colab._parse((ROOT / "book" / f"{stem}.md").read_text().splitlines()):
            if isinstance(item, colab._Directive) and (item.name == "solution" or (
                    item.name == "admonition" and "dropdown" in item.options.get("class", ""))):
                prose = re.sub(r"^(`{3,}).*?^\1\s*$", "", "\n".join(item.body), flags=re.M | re.S)  # not code
                runs = re.findall(r"[A-Za-z][A-Za-z ,]{29,}", prose.replace("\n", " "))
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
def test_citations_and_reference_lists_read_the_same_on_the_site_and_in_colab(smoke_build):
    def plain(markdown: str) -> str:  # the words a reader sees
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown.replace("*", ""))
        return re.sub(r"\s+", " ", text).strip()

    site = ROOT / "_build" / "smoke" / "html" / "notebooks"
    for stem in CHAPTERS:
        source = (ROOT / "book" / f"{stem}.md").read_text()
        page = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", (site / f"{stem}.html").read_text())))
        colab_md = re.sub(r"\s+", " ", "\n".join(
            c.source for c in nbformat.read(ROOT / "_build" / "smoke" / "colab" / "notebooks" / f"{stem}.ipynb",
                                            as_version=4).cells if c.cell_type == "markdown"))
        for m in colab.CITE.finditer(source):
            text = citations.cite(BIB, m["role"] or "p", m["targets"])
            assert plain(text) in page, (stem, m[0], plain(text))
            assert re.sub(r"\s+", " ", text) in colab_md, (stem, m[0])
        entries = citations.bibliography(BIB, citations.cited(source))
        assert entries, stem
        for entry in entries:  # each entry of the page's list, in the Colab notebook's list too
            assert plain(entry[2:]) in page, (stem, plain(entry[2:]))
            assert re.sub(r"\s+", " ", entry) in colab_md, (stem, entry)


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


def test_the_parameters_cell_quotes_the_newest_measured_times(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    run = {"date": "2026-12-01T00:00:00+00:00", "machine": {"cpu_count": 2}}
    (results / "published_weights.json").write_text(json.dumps({"runs": [
        {**run, "per_chapter": {"vae": {"cold_s": 30.0}}},
        {**run, "date": "2026-12-02T00:00:00+00:00", "per_chapter": {"vae": {"cold_s": 23.4}}}]}))
    (results / "full_build_cold.txt").write_text("# 2026-11-20\nvae  1260.0  executed\n")
    (results / "chapter_budget.json").write_text(json.dumps({"runs": [
        {**run, "per_chapter": {"vae": {"cold_s": 100.0}, "vq-vae": {"cold_s": 200.0}}}]}))
    vae = colab.chapter_times(tmp_path, "vae")
    assert "about 23 s on a 2-core CPU (measured 2026-12-02" in vae  # the newest run naming the chapter
    assert "about 21 min on a 2-core CPU (measured 2026-11-20)" in vae and "its own models" not in vae
    new = colab.chapter_times(tmp_path, "vq-vae")  # newer than the cold full build: its budget benchmark
    assert "training its own models" in new and "about 3 min on a 2-core CPU (measured 2026-12-01)" in new
    assert "not measured yet" in colab.chapter_times(tmp_path, "pca")

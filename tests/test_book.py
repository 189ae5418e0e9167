"""The whole book in smoke mode: every chapter executed by papermill, the site built by Jupyter Book
with warnings as errors, and every page opened in headless Chromium.

Screenshots of every page are left in ``_build/smoke/screenshots/`` to look at.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from conftest import (SMOKE, assert_drawn_as_pytorch_decodes, click_explorer, edited_package_copy,
                      run_nbval)
from latentbook import build

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)

pytestmark = pytest.mark.slow


def test_every_chapter_executes_in_smoke_mode(smoke_build):
    _, runs = smoke_build
    assert [r.stem for r in runs if r.stem in CHAPTERS] == CHAPTERS
    for stem in CHAPTERS:
        nb = nbformat.read(ROOT / "_executed" / "smoke" / f"{stem}.ipynb", as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and 'MODE = "smoke"' in injected[0].source, stem
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.output_type != "error", (stem, out)
                if out.output_type == "stream" and out.name == "stderr":
                    assert "Traceback" not in out.text and "Error" not in out.text, (stem, out.text)
        assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", [])), stem


def test_rebuild_with_nothing_changed_executes_nothing(smoke_build):
    # Budgets (smoke mode 5 min, no-change rebuild 60 s) are measured and written to
    # _build/smoke/timings.txt, not asserted: a timed test fails on a busy machine, not on slow code.
    start = time.perf_counter()
    _, runs = build.build(ROOT, SMOKE)
    assert {r.status for r in runs if r.stem in CHAPTERS} == {"up to date"}
    with open(ROOT / "_build" / "smoke" / "timings.txt", "a") as f:
        f.write(f"no-change rebuild: {time.perf_counter() - start:.1f} s\n")


def test_changed_parameters_reexecute(smoke_build, tmp_path):
    key_a = build.code_key(ROOT, CHAPTERS[0], SMOKE)
    key_b = build.code_key(ROOT, CHAPTERS[0], {**SMOKE, "SEED": 1})
    assert key_a != key_b
    assert build.stale(ROOT, CHAPTERS[0], {**SMOKE, "SEED": 1}, ROOT / "_executed" / "smoke") is not None


def _copy_of_the_book(tmp_path: Path) -> Path:
    """The sources, notebooks and smoke execution of the book in ``tmp_path`` (the same store)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder in ("book", "notebooks"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copytree(ROOT / "_executed" / "smoke", tmp_path / "_executed" / "smoke")
    return tmp_path


def test_a_prose_edit_executes_nothing_and_reaches_the_page(smoke_build, tmp_path):
    root = _copy_of_the_book(tmp_path)
    md = root / "book" / "vae.md"
    text = md.read_text()
    old = "## The model and its loss"
    assert old in text
    md.write_text(text.replace(old, old + "\n\nA sentence added by a test, and no code.", 1))
    build.sync(root)
    runs = {r.stem: r.status for r in build.execute(root, SMOKE, root / "_executed" / "smoke", log=lambda *a: None)}
    assert runs["vae"] == "prose updated" and {s for k, s in runs.items() if k != "vae"} == {"up to date"}
    merged = nbformat.read(root / "_executed" / "smoke" / "vae.ipynb", as_version=4)
    original = nbformat.read(ROOT / "_executed" / "smoke" / "vae.ipynb", as_version=4)
    assert any("A sentence added by a test" in c.source for c in merged.cells if c.cell_type == "markdown")
    assert [c.outputs for c in merged.cells if c.cell_type == "code"] == \
        [c.outputs for c in original.cells if c.cell_type == "code"]  # the outputs of the run, unchanged
    # the same again: nothing to do
    runs = {r.stem: r.status for r in build.execute(root, SMOKE, root / "_executed" / "smoke", log=lambda *a: None)}
    assert set(runs.values()) == {"up to date"}
    # a code edit does execute
    code = 'vae2, h2 = lb.zoo.get("vae-2", run)'
    assert code in md.read_text()
    md.write_text(md.read_text().replace(code, code + "  # edited", 1))
    build.sync(root)
    assert build.stale(root, "vae", SMOKE, root / "_executed" / "smoke") == "its code cells or parameters changed"


def test_comments_in_every_module_execute_no_chapter(smoke_build, tmp_path):
    """`make book` with a comment appended to (and the docstring changed in) every module of the package:
    every chapter is up to date, because modules are compared by meaning, not bytes."""
    copy = edited_package_copy(tmp_path)
    root = _copy_of_the_book(tmp_path / "book-copy")
    proc = subprocess.run([sys.executable, "-m", "latentbook", "build", "--mode", "smoke", "--device", "cpu",
                           "--no-site"], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(copy.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "executing" not in proc.stdout + proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in CHAPTERS]
    assert len(table) == len(CHAPTERS) and all(line.endswith("up to date") for line in table), proc.stdout


def test_a_changed_store_entry_or_module_reexecutes(smoke_build, tmp_path, monkeypatch):
    executed = ROOT / "_executed" / "smoke"
    recorded = json.loads((executed / "vae.json").read_text())
    assert "latentbook.evaluate" in recorded["modules"] and len(recorded["entries"]) >= 10
    assert build.stale(ROOT, "vae", SMOKE, executed) is None
    monkeypatch.setattr(build, "module_fingerprint", lambda name, package_dir=None: "another meaning")
    assert build.stale(ROOT, "vae", SMOKE, executed).startswith("latentbook code it uses changed")
    monkeypatch.undo()
    monkeypatch.setenv("LATENTBOOK_MODELS", str(tmp_path / "empty-store"))
    assert "store entry" in build.stale(ROOT, "vae", SMOKE, executed)


def test_a_failing_chapter_names_itself_and_keeps_its_notebook(tmp_path):
    root = _copy_of_the_book(tmp_path)
    md = root / "book" / "data.md"
    md.write_text(md.read_text().replace("run = start(MODE, DEVICE, DATASET, SEED)",
                                         "run = start(MODE, DEVICE, DATASET, SEED)\nraise RuntimeError('a test fault')", 1))
    build.sync(root)
    out = root / "_executed" / "smoke"
    before = (out / "data.ipynb").read_bytes()
    with pytest.raises(build.BuildError, match="chapter 'data' failed") as err:
        build.execute(root, SMOKE, out, only=["data"], log=lambda *a: None)
    assert "a test fault" in str(err.value) and str(out / "data.failed.ipynb") in str(err.value)
    assert (out / "data.failed.ipynb").is_file()
    assert (out / "data.ipynb").read_bytes() == before  # the last good execution is kept, whole
    assert not list(out.glob(".*.tmp*"))


def test_nbval_same_seed_same_cpu_same_numbers(smoke_build, tmp_path):
    """nbval executes every smoke chapter again, every model trained anew in an empty store from the same
    seed, and the cells that print or glue the chapters' key numbers print what papermill recorded."""
    store = tmp_path / "empty-store"
    proc = run_nbval(ROOT / "_executed" / "smoke", CHAPTERS, tmp_path / "again", models=store)
    assert proc.returncode == 0, proc.stdout[-6000:]
    cells = sum(1 for stem in CHAPTERS for c in nbformat.read(ROOT / "_executed" / "smoke" / f"{stem}.ipynb",
                                                                as_version=4).cells
                if c.cell_type == "code" and c.source.strip())
    assert f"{cells} passed" in proc.stdout, proc.stdout[-2000:]
    assert len(list(store.glob("*.pt"))) >= 20  # the models were trained again, not read back


def test_nbval_catches_a_changed_seed(smoke_build, tmp_path):
    def seed_1(nb):
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert "SEED = 0" in injected.source
        injected.source = injected.source.replace("SEED = 0", "SEED = 1")

    proc = run_nbval(ROOT / "_executed" / "smoke", ["elbo"], tmp_path, edit=seed_1)
    assert proc.returncode == 1 and " failed" in proc.stdout, proc.stdout[-3000:]
    assert "ELBO by sampling" in proc.stdout  # the tagged cell whose Monte Carlo estimate moved


def test_the_site_publishes_the_models_the_book_used(smoke_build):
    html, _ = smoke_build
    manifest = json.loads((html / "models" / "manifest.json").read_text())
    used = {}
    for stem in CHAPTERS:
        used.update(json.loads((ROOT / "_executed" / "smoke" / f"{stem}.json").read_text())["entries"])
    assert set(manifest["entries"]) == set(used) and len(used) >= 20
    for key, item in manifest["entries"].items():
        path = html / "models" / f"{key}.pt"
        assert path.stat().st_size == item["bytes"] and build.store.file_sha256(path) == item["sha256"]


def test_a_changed_stylesheet_reaches_the_site(smoke_build):
    """Sphinx copies extra files only when a page is out of date; a new stylesheet alone must still arrive."""
    out = ROOT / "_build" / "smoke"  # in place: a copy elsewhere would make Sphinx rewrite every page anyway
    css = (ROOT / "_assets" / "latentbook.css").read_text()
    for old in (out / "src" / "assets" / "latentbook.css", out / "html" / "latentbook.css"):
        old.write_text("/* an older stylesheet */\n")
    html = build.build_site(ROOT, ROOT / "_executed" / "smoke", out)
    assert (html / "latentbook.css").read_text() == css


def test_unknown_chapter_and_mode_are_refused():
    with pytest.raises(build.BuildError, match="unknown chapter"):
        build.execute(ROOT, SMOKE, ROOT / "_executed" / "smoke", only=["no-such-chapter"])
    with pytest.raises(ValueError, match="unknown MODE"):
        build.build(ROOT, {"MODE": "fast"})


@pytest.fixture(scope="session")
def site(smoke_build, serve):
    html, _ = smoke_build
    return serve(html)


@pytest.mark.parametrize("stem", CHAPTERS)
def test_page_in_browser(site, browser, stem):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []

    def route(r):
        url = r.request.url
        if url.startswith(site) or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            outside.append(url)
            r.abort()

    page.route("**/*", route)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site}/notebooks/{stem}.html", wait_until="load")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30000)
    page.evaluate("() => MathJax.startup.promise")
    page.wait_for_timeout(300)
    shots = ROOT / "_build" / "smoke" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{stem}.png"), full_page=True)

    assert outside == [], f"requests leaving the site: {outside}"
    assert errors == [], f"JavaScript errors: {errors}"
    # math is typeset: MathJax containers exist, and no raw delimiters are left in the prose
    assert page.locator("mjx-container").count() > 0
    prose = page.evaluate(
        """() => { const m = document.querySelector('main').cloneNode(true);
                   m.querySelectorAll('pre, code, .cell_input, mjx-container, script').forEach(e => e.remove());
                   return m.innerText; }"""
    )
    for raw in ("$$", "\\(", "\\[", "{glue:text}", "{glue}"):
        assert raw not in prose, f"unrendered {raw!r} on {stem}"
    # every image loaded, and figures are there
    broken = page.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    assert broken == []
    assert page.locator(".cell_output img").count() >= 1
    # no cell shows an error
    assert page.locator(".cell_output .output.error, .cell_output .traceback").count() == 0
    assert "Traceback" not in page.locator("main").inner_text()
    # nothing in a cell is cut off at 1280 px: code fits (80 characters), longer printed lines wrap
    cut = page.evaluate(
        """() => [...document.querySelectorAll('div.cell pre')]
                   .filter(p => p.scrollWidth > p.clientWidth + 1)
                   .map(p => p.innerText.split('\\n').reduce((a, b) => b.length > a.length ? b : a, ''))"""
    )
    assert cut == [], f"cell text wider than its box on {stem}: {cut}"
    # display math is never cut: at 1280 px every equation fits its column; on a phone (390 px) one wider
    # than the column scrolls in its own box
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(200)
        cut = page.evaluate(
            """() => [...document.querySelectorAll('mjx-container[display="true"]')].filter(m => {
                       const s = getComputedStyle(m), main = document.querySelector('main').getBoundingClientRect();
                       const r = m.getBoundingClientRect();
                       const scrolls = ['auto', 'scroll'].includes(s.overflowX) && window.innerWidth < 1280;
                       return (m.scrollWidth > m.clientWidth + 1 && !scrolls) || r.right > main.right + 1
                              || r.left < main.left - 1; }).map(m => m.textContent.slice(0, 60))"""
        )
        assert cut == [], f"display math cut at {width} px on {stem}: {cut}"
    page.set_viewport_size({"width": 1280, "height": 900})
    # the closing sections rendered as sections (an unclosed fence would swallow them)
    headings = page.locator("main h2").all_inner_texts()
    for section in ("Summary", "References"):
        assert any(section in h for h in headings), (stem, headings)
    # the page states its parameters, and links to its notebook on Colab
    assert 'MODE = "smoke"' in page.locator("main").inner_text()
    colab = page.locator("a[href*='colab.research.google.com']")
    assert colab.count() >= 1
    assert colab.first.get_attribute("href").endswith(f"/blob/colab/notebooks/{stem}.ipynb")  # the Colab edition
    page.close()


def test_latent_explorer_on_the_site(site, browser):
    """The VAE chapter's in-browser explorer: two clicks decode two different digits, equal to what
    the chapter's (cached) PyTorch model decodes at those codes."""
    from latentbook import zoo
    from latentbook.chapter import start

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site}/notebooks/vae.html", wait_until="load")
    # far apart: even the smoke-mode VAE decodes them differently
    codes, images = click_explorer(page, "div.lb-explorer", [(0.2, 0.25), (0.8, 0.75)])
    page.locator("div.lb-explorer").first.screenshot(path=str(ROOT / "_build" / "smoke" / "screenshots" /
                                                           "latent-explorer.png"))
    # the live widgets (latent explorer, interpolation, β) show their first frame on the static site
    assert page.locator("div.cell:has(.jupyter-widgets) .jupyter-widgets img").count() >= 3
    assert errors == []
    model, _ = zoo.get("vae-2", start("smoke", "cpu", "mnist", 0))
    # smoke mode's briefly trained VAE draws faint digits: a smaller difference between the two
    assert_drawn_as_pytorch_decodes(model, codes, images, min_difference=0.1)
    page.close()

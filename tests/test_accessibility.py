"""Accessibility: every figure has alt text that says what it shows, and axe-core finds no serious or
critical violation on any page of the smoke site, at a desktop (1280 px) and a phone (390 px) width.

axe-core is vendored from npm like MathJax (``latentbook.build.VENDOR``) and injected by the test; the
site itself never loads it. Screenshots at 390 px are left in ``_build/smoke/screenshots/390/``.
"""

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from latentbook import build

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)
AXE = ROOT / "_assets" / "vendor" / "axe-core" / "axe.min.js"

# A code cell draws a figure when it uses the plotting helpers, matplotlib, an explorer or a widget
# (checked against the executed notebooks by test_every_cell_with_a_figure_output_has_alt_text).
DRAWS = re.compile(r"lb\.plots\.|plt\.|\bfig\b|lb\.explorer\.(static|live|interpolation)|widgets\.interact|"
                   r"\.imshow\(")
WIDTHS = (1280, 390)


def _alt(cell) -> str:
    return ((cell.metadata.get("mystnb") or {}).get("image") or {}).get("alt") or ""


def _bad_alt(alt: str) -> str | None:
    """Why ``alt`` is not a text alternative (None when it is one)."""
    alt = alt.strip()
    if not alt:
        return "empty"
    if re.fullmatch(r"\S+\.(png|jpe?g|svg|gif)|(https?:|data:|\.\.?/|/)\S*|\S*[/\\]\S*", alt):
        return "a file path or URL"
    if re.fullmatch(r"(an? )?(figure|image|plot|graph|chart|picture)\.?", alt, re.I):
        return "says only that it is a figure"
    return None


@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_figure_cell_has_alt_text(stem):
    """Static: each code cell of book/<stem>.md that draws carries ``mystnb.image.alt`` (myst-nb puts
    it on the <img> of the cell's figure) with a sentence that describes the figure."""
    cells = [c for c in jupytext.read(ROOT / "book" / f"{stem}.md").cells if c.cell_type == "code"]
    missing = [c.source.strip().splitlines()[-1] for c in cells if DRAWS.search(c.source) and not _alt(c)]
    assert missing == [], f"{stem}: figure cells without alt text (mystnb: image: alt:), ending {missing}"
    for c in cells:
        alt = _alt(c)
        if alt:
            assert _bad_alt(alt) is None and len(alt.split()) >= 8, (stem, _bad_alt(alt), alt)


@pytest.mark.slow
def test_every_cell_with_a_figure_output_has_alt_text(smoke_build):
    """The executed smoke chapters: every code cell that output an image, a widget or the in-browser
    explorer carries alt text (so the static test's idea of a drawing cell misses none)."""
    kinds = ("image/png", "image/svg+xml", "image/jpeg", "application/vnd.jupyter.widget-view+json")
    missing = []
    for stem in CHAPTERS:
        nb = nbformat.read(ROOT / "_executed" / "smoke" / f"{stem}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            figure = any(k in out.get("data", {}) for out in cell.get("outputs", []) for k in kinds)
            explorer = any("lb-explorer" in str(out.get("data", {}).get("text/html", ""))
                           for out in cell.get("outputs", []))
            if (figure or explorer) and not _alt(cell):
                missing.append((stem, cell.source.strip().splitlines()[-1]))
    assert missing == []


@pytest.fixture(scope="module")
def site(smoke_build, serve):
    html, _ = smoke_build
    return html, serve(html)


def _pages(html: Path) -> list[str]:
    """Every page of the site: the chapters and Sphinx's own (index, search, general index ...)."""
    pages = sorted(p.relative_to(html).as_posix() for p in html.glob("*.html"))
    pages += [f"notebooks/{stem}.html" for stem in CHAPTERS]
    return pages


def _open(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="networkidle")
    page.wait_for_function("() => !window.MathJax || (MathJax.startup && MathJax.startup.promise)", timeout=30000)
    page.evaluate("() => window.MathJax ? MathJax.startup.promise : null")
    # the widget manager draws the saved widgets after the page loads: wait until each has a view
    page.wait_for_function(
        """() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
                 .every(s => s.parentElement.querySelector('.jupyter-widgets'))""", timeout=30000)
    # and colours have settled (axe measures contrast on what is drawn, mid-transition too)
    page.wait_for_function("() => document.getAnimations().every(a => a.playState !== 'running')",
                           timeout=10000)
    page.wait_for_timeout(500)
    return page, errors


# Rules that misfire on the theme (pydata-sphinx-theme 0.17, HTML we do not write), per element:
THEME_FALSE_POSITIVES = {
    # The colour-mode button is named "Color mode" (aria-label) and shows one icon. Font Awesome turns
    # its three icons into aria-hidden <svg>s whose <title> tooltips ("Light", "Dark", "System
    # Settings") axe counts as visible text, so "label in name" fails although no text is visible.
    ("label-content-name-mismatch", 'class="btn btn-sm nav-link pst-navbar-icon theme-switch-button'),
}


def _serious(violations) -> list[str]:
    found = []
    for v in violations:
        if v["impact"] not in ("serious", "critical"):
            continue
        for node in v["nodes"]:
            target = " ".join(map(str, node["target"]))
            if any(rule == v["id"] and node["html"].startswith("<button " + element)
                   for rule, element in THEME_FALSE_POSITIVES):
                continue
            data = [c["data"] for c in node["any"] + node["all"] if isinstance(c.get("data"), dict)]
            found.append(f"{v['id']} ({v['impact']}): {target}: {node['html'][:160]} {data[:1]}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_axe_finds_no_serious_violation(site, browser, width):
    html, url = site
    problems = {}

    def check(page):
        page.add_script_tag(path=str(AXE))
        return _serious(page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")["violations"])

    for name in _pages(html):
        page, errors = _open(browser, f"{url}/{name}", width)
        found = check(page)
        if found:  # on a busy machine a late repaint can catch colours mid-change: what stays counts
            again, _ = _open(browser, f"{url}/{name}", width)
            again.wait_for_timeout(1500)
            still = check(again)
            again.close()
            found = [f for f in found if f in still]
        if found:
            problems[name] = found
        assert errors == [], (name, errors)
        if width == 390 and name.startswith("notebooks/"):
            shots = ROOT / "_build" / "smoke" / "screenshots" / "390"
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"{Path(name).stem}.png"), full_page=True)
        page.close()
    assert problems == {}, "\n".join(f"{name}:\n  " + "\n  ".join(f) for name, f in problems.items())


@pytest.mark.slow
def test_every_image_on_every_chapter_page_has_alt_text(site, browser):
    """In the browser, after the widgets are drawn: each <img> of each chapter's article (figures,
    the first frames of interactive figures) has an alt that says something, not a file name."""
    html, url = site
    bad = {}
    for stem in CHAPTERS:
        page, _ = _open(browser, f"{url}/notebooks/{stem}.html", 1280)
        alts = page.evaluate("() => [...document.querySelectorAll('article img')].map(i => i.getAttribute('alt'))")
        assert len(alts) >= 1, stem
        wrong = [a for a in alts if a is None or _bad_alt(a) is not None]
        if wrong:
            bad[stem] = wrong
        # the in-browser explorer: a focusable plane with a name, and its coordinates in a live region
        for plane in page.locator("div.lb-explorer canvas.lb-plane").all():
            assert plane.get_attribute("tabindex") == "0" and plane.get_attribute("aria-label"), stem
        for live in page.locator("div.lb-explorer .lb-z").all():
            assert live.get_attribute("aria-live") == "polite", stem
        page.close()
    assert bad == {}

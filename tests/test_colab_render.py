"""The Colab-rendering check (``tests/colab_render.py``): Markdown cells rendered as Colab renders them
(marked + KaTeX, in headless Chromium) and every problem a learner would see reported.

A handmade notebook with one fault per cell proves that each kind of fault is caught; a good one
(folded solution with math, a theorem in bold, inline HTML, images of every kind) passes with no problem
and its math typeset. ``test_every_colab_notebook_renders`` runs the check over the generated Colab
notebooks (the smoke build's Colab editions, ``_build/smoke/colab``). Screenshots go to ``_build/colab-render/``.
"""

import base64
import struct
import zlib
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import colab_render
from latentbook import build

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = build.chapters(ROOT)
SHOTS = ROOT / "_build" / "colab-render"

pytestmark = pytest.mark.slow


def _png(width: int = 12, height: int = 8, rgb=(200, 30, 30)) -> bytes:
    """A small solid-colour PNG, made by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


PNG64 = base64.b64encode(_png()).decode()
SERVED = "https://raw.githubusercontent.com/example/latentbook/main/"  # mapped to a local folder by url_map


@pytest.fixture(scope="module")
def vendor():
    return colab_render.vendor_dir(ROOT)  # marked and KaTeX from npm, once


@pytest.fixture
def colab_page(browser):
    """A fresh browser page (its own context) for the Colab rendering check."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def _write(nb, path: Path) -> Path:
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


# One fault per cell: (cell source, a fragment the problem reported for that cell must contain).
FAULTS = [
    ("The reconstruction error is {glue:text}`pca_error:.3f` on the test set.", "{glue"),
    ("```{prf:theorem} Maximum variance\n:label: thm-max-variance\n\nThe first direction maximises $w^\\top C w$.\n```",
     "directive fence"),
    (":::{admonition} Why a bias?\n:class: tip\n\nBecause the data are not centred.\n:::", ":::{"),
    ("A picture: ![x](nope.png)", "image does not load: nope.png"),
    ("**Solution.** The answer is $k = 2$.", '"Solution" not folded'),
    # KaTeX's auto-render never closes math inside an unbalanced brace: the TeX stays as text.
    ("A fraction: $\\frac{1}{$ here.", "math left untypeset"),
    ("A fraction: $\\frac{1}$ here, and $\\notamacro x$.", "KaTeX error: ParseError"),
    ("<details open>\n<summary>Solution</summary>\n\nShown to everybody.\n\n</details>", "open <details>"),
    ("As {ref}`the theorem <thm-max-variance>` says.", "{ref}"),
    # a folded solution whose body shows anyway (here forced by CSS): Playwright's visibility sees it
    ("<style>details.leaky::details-content { content-visibility: visible; }</style>\n\n"
     "<details class=\"leaky\">\n<summary>Solution</summary>\n\nLeaked answer.\n\n</details>",
     "solution body visible before its summary is clicked"),
    # Markdown inside an HTML block is not rendered unless blank lines set it apart
    ("<details>\n<summary>Solution</summary>\n**Bold** answer.\n</details>", "Markdown left unrendered"),
]


def test_every_fault_is_caught(colab_page, vendor, tmp_path):
    nb = new_notebook(cells=[new_markdown_cell(source) for source, _ in FAULTS])
    path = _write(nb, tmp_path / "faulty.ipynb")
    problems = colab_render.render_notebooks(colab_page, [path], SHOTS, screenshots=True, vendor=vendor)["faulty"]
    print("\n".join(problems))
    for index, (source, expected) in enumerate(FAULTS):
        mine = [p for p in problems if p.startswith(f"cell {index}:")]
        assert any(expected in p for p in mine), (index, source, expected, mine)
    assert all(p.startswith("cell ") for p in problems), problems  # nothing but cell faults (no JS error)


def test_a_good_notebook_passes_and_its_math_is_typeset(colab_page, vendor, tmp_path):
    folder = tmp_path / "repo"
    (folder / "book" / "images").mkdir(parents=True)
    (folder / "book" / "images" / "dot.png").write_bytes(_png(rgb=(30, 120, 200)))
    solution = new_markdown_cell(
        "**Exercise 1.** Compute the product.\n\n"
        "<details>\n<summary>Solution</summary>\n\n"
        "The body, with $x_1 * y_2$ math and $$\\sum_i x_i$$ and more $a_i * b_i$.\n\n"
        "</details>")
    theorem = new_markdown_cell(
        "**Theorem 1 (maximum variance).** Among unit vectors $w$ ($\\lVert w \\rVert = 1$), the first principal "
        "direction $w_1$ maximises $w^\\top C w$, where $C = \\frac{1}{N} X_c^\\top X_c$.<sup>†</sup>\n\n"
        "$$\n\\begin{aligned}\n\\mathrm{ELBO}(q) &= \\mathbb E_q[\\log p_\\theta(x, z) - \\log q(z)] \\\\\n"
        "&\\le \\log p_\\theta(x)\n\\end{aligned}\n$$\n\n"
        "<sup>†</sup> Proved in the chapter on PCA. Prices in \\$ stay text, as does `$HOME` in code.")
    images = new_markdown_cell(
        f"An inline image ![red](data:image/png;base64,{PNG64}), an attachment ![att](attachment:dot.png) "
        f"and a served one ![blue]({SERVED}book/images/dot.png).\n\n"
        "| $k$ | share |\n|---|---|\n| 1 | $0.62$ |\n\n"
        "```python\nprint('$not math$')\n```")
    images.attachments = {"dot.png": {"image/png": PNG64}}
    code = new_code_cell("plt.imshow(x)", execution_count=1, outputs=[
        new_output("stream", name="stdout", text="loss 0.123\n"),
        new_output("display_data", data={"image/png": PNG64, "text/plain": "<Figure>"}),
    ])
    nb = new_notebook(cells=[new_markdown_cell("# A good chapter\n\nIt has $n = 3$ points."), theorem, solution,
                             images, code])
    path = _write(nb, tmp_path / "good.ipynb")
    problems = colab_render.render_notebooks(colab_page, [path], SHOTS, screenshots=True, vendor=vendor,
                                             url_map={SERVED: folder})
    assert problems == {"good": []}, colab_render.report(problems)
    page = colab_page
    # the math is typeset: one .katex per math span, the display ones as displays, nothing mangled
    assert page.locator(".cell.markdown .katex").count() == 12
    assert page.locator(".cell.markdown .katex-display").count() == 2
    tex = page.locator(".cell.markdown annotation[encoding='application/x-tex']").all_text_contents()
    assert "x_1 * y_2" in tex and "a_i * b_i" in tex and "\\sum_i x_i" in tex
    assert any("\\\\" in t and "&=" in t for t in tex)  # the aligned display kept its \\ and &
    assert page.locator("sup").count() == 2 and page.locator("strong", has_text="Theorem 1").count() == 1
    assert page.locator("code", has_text="$HOME").count() == 1 and page.locator("th .katex, td .katex").count() == 2
    assert page.locator(".cell.markdown img").count() == 3 and page.locator(".cell.code img").count() == 1
    # the solution is folded; clicking its summary shows the body
    body = page.locator("details").get_by_text("The body, with")
    assert page.locator("details summary", has_text="Solution").is_visible() and not body.is_visible()
    page.locator("details summary").click()
    assert body.is_visible()
    assert (SHOTS / "good.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# The generated Colab editions (latentbook.colab) of the smoke build: the full edition and the student one.


@pytest.fixture(scope="session")
def colab_notebooks(smoke_build) -> Path:
    """The folder the build wrote the Colab editions to (``notebooks/``, ``student/notebooks/``)."""
    return ROOT / "_build" / "smoke" / "colab"


@pytest.mark.parametrize("edition", ["notebooks", "student/notebooks"])
@pytest.mark.parametrize("stem", CHAPTERS)
def test_every_colab_notebook_renders(colab_notebooks, colab_page, vendor, stem, edition):
    notebook = colab_notebooks / edition / f"{stem}.ipynb"
    assert notebook.is_file(), f"no Colab notebook for chapter {stem} in {colab_notebooks / edition}"
    shots = SHOTS / "chapters" / edition.split("/")[0]
    problems = colab_render.render_notebooks(colab_page, [notebook], shots, screenshots=True, vendor=vendor)
    assert problems == {stem: []}, colab_render.report(problems)
    assert colab_page.locator(".cell.markdown .katex").count() > 0 or "$" not in notebook.read_text()

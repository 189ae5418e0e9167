"""Render notebooks' Markdown cells the way Google Colab does, in headless Chromium, and list what is wrong.

Colab renders a Markdown cell with *marked* (CommonMark + GFM, inline HTML allowed) after taking the math
out of its way, then typesets the math with KaTeX. This module does the same, offline, with the copies of
``marked`` and ``katex`` that :func:`latentbook.build.vendor_assets` fetched from npm:

1. math spans are replaced by placeholders (``$$...$$`` first, then ``$...$``; not ``\\$``, not inside
   code spans or fenced code), so that ``*``, ``_`` and ``\\\\`` in TeX are not read as Markdown;
2. the rest is rendered by ``marked.parse`` (GFM on, raw HTML kept), the math put back, and KaTeX's
   auto-render typesets ``$$...$$`` / ``$...$`` with ``throwOnError: false``;
3. code cells show their source and their ``image/*`` / text outputs, so a screenshot looks like the
   notebook.

One HTML page per notebook is served to the browser from memory through Playwright's request routing
(``BASE``), the vendored files from ``_assets/vendor``: nothing is fetched from outside. A relative image
path (``![x](images/a.png)``) does not load, as in Colab, where a notebook has no folder beside it; cell
attachments (``attachment:name``) and ``data:`` URIs do. ``url_map`` serves absolute URLs (say
``https://raw.githubusercontent.com/<org>/<repo>/main/``) from a local folder instead.

Problems reported, per notebook (a list of strings, empty when all is well):

* raw MyST in a Markdown cell's rendered text or HTML (``{glue``, a ```` ```{ ```` fence, ``:::{``,
  ``{prf:``, ``{ref}``, ``{doc}``, any ``{role}`code```, ``:label:``, ``:class:`` and other directive
  options, ``(target)=``, ``% comment`` lines, ``[^footnote]``, ``{{ substitution }}``);
* math left untypeset (a stray ``$`` or ``$$``), and KaTeX errors (``.katex-error``, with the message);
* Markdown left as text (``**bold**``, ``# heading``), as happens inside an HTML block without blank lines;
* an ``<img>`` that does not load (``naturalWidth == 0``), in any cell;
* text beginning with "Solution" that is not the ``<summary>`` of a closed ``<details>``; a solution
  body visible before its summary is clicked (Playwright's visibility), or not shown after the click;
* JavaScript errors on the page.
"""

from __future__ import annotations

import html
import json
import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://colab-render.invalid/"  # never resolved: every request to it is answered by the route below


def vendor_dir(root: Path = ROOT) -> Path:
    """``_assets/vendor`` with marked and KaTeX in it (fetched from npm once, idempotent)."""
    from latentbook import build

    vendor = build.vendor_assets(root, log=lambda *a: None)
    for needed in ("marked/lib/marked.umd.js", "katex/dist/katex.min.js", "katex/dist/contrib/auto-render.min.js",
                   "katex/dist/katex.min.css"):
        if not (vendor / needed).is_file():
            raise FileNotFoundError(f"{vendor / needed} is missing: is it in latentbook.build.VENDOR?")
    return vendor


# --------------------------------------------------------------------------------------------
# The page


def _cells_json(nb) -> list[dict]:
    """What the page needs of each cell: type, source, attachments (Markdown), outputs (code)."""
    cells = []
    for cell in nb.cells:
        entry = {"type": cell.cell_type, "source": cell.source}
        if cell.cell_type == "markdown":
            attachments = {}
            for name, bundle in (cell.get("attachments") or {}).items():
                for mime, data in bundle.items():
                    if mime.startswith("image/"):
                        data = "".join(data) if isinstance(data, list) else data
                        attachments[name] = f"data:{mime};base64,{data.strip()}"
                        break
            entry["attachments"] = attachments
        elif cell.cell_type == "code":
            outputs = []
            for out in cell.get("outputs", []):
                if out.output_type == "stream":
                    outputs.append({"text": out.text})
                elif out.output_type == "error":
                    outputs.append({"text": f"{out.ename}: {out.evalue}", "error": True})
                elif out.output_type in ("display_data", "execute_result"):
                    data = out.get("data", {})
                    image = next((m for m in ("image/png", "image/jpeg") if m in data), None)
                    if image:
                        src = "".join(data[image]) if isinstance(data[image], list) else data[image]
                        outputs.append({"image": f"data:{image};base64,{src.strip()}"})
                    elif "image/svg+xml" in data:
                        svg = "".join(data["image/svg+xml"]) if isinstance(data["image/svg+xml"], list) else data["image/svg+xml"]
                        outputs.append({"svg": svg})
                    elif "text/plain" in data:
                        outputs.append({"text": data["text/plain"]})
            entry["outputs"] = outputs
        cells.append(entry)
    return cells


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>  // a script that fails (syntax, a missing vendored file) ends the wait at once; pageerror says why
window.addEventListener("error", () => {{ window.lbProblems = window.lbProblems || Promise.resolve([]);
                                          document.documentElement.dataset.done = "yes"; }});
</script>
<link rel="stylesheet" href="vendor/katex/dist/katex.min.css">
<script src="vendor/marked/lib/marked.umd.js"></script>
<script src="vendor/katex/dist/katex.min.js"></script>
<script src="vendor/katex/dist/contrib/auto-render.min.js"></script>
<style>
  body {{ font-family: Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 14px; line-height: 1.5;
         max-width: 980px; margin: 16px auto; color: #212121; background: #fff; }}
  .cell {{ margin: 6px 0; padding: 4px 12px; border-left: 3px solid transparent; }}
  .cell.code {{ background: #f7f7f7; border-left-color: #ccc; }}
  .cell.code pre.src {{ margin: 0; font-size: 13px; white-space: pre-wrap; }}
  .cell.code .out pre {{ margin: 4px 0; font-size: 12px; white-space: pre-wrap; max-height: 16em; overflow: hidden; }}
  .cell.code .out pre.error {{ color: #b00; }}
  .cell.markdown img, .cell.code img {{ max-width: 100%; }}
  .cell.markdown table {{ border-collapse: collapse; }}
  .cell.markdown th, .cell.markdown td {{ border: 1px solid #ddd; padding: 2px 8px; }}
  .cell.markdown code {{ background: #f2f2f2; padding: 0 2px; }}
  .cell.markdown blockquote {{ border-left: 3px solid #ddd; margin-left: 0; padding-left: 12px; color: #555; }}
  .cell .label {{ float: right; color: #aaa; font-size: 11px; }}
</style></head>
<body>
<h1 class="title" style="font-size:13px;color:#888">{title} — rendered as Colab renders it (marked + KaTeX)</h1>
<div id="notebook"></div>
<script type="application/json" id="cells">{cells}</script>
<script>
"use strict";
const cells = JSON.parse(document.getElementById("cells").textContent);
const escapeHtml = s => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

// Take math out of Markdown's way: $$...$$ first, then $...$ (not \\$, never inside code).
function protectMath(src) {{
  const math = [];
  let out = "", i = 0, lineStart = true;
  const closing = (from, delim, inline) => {{
    for (let j = from; j < src.length; j++) {{
      if (src[j] === "\\\\") {{ j++; continue; }}
      if (inline && src[j] === "\\n" && /^\\n[ \\t]*\\n/.test(src.slice(j))) return -1;  // a blank line ends it
      if (src.startsWith(delim, j)) return j;
    }}
    return -1;
  }};
  while (i < src.length) {{
    const rest = src.slice(i);
    let m;
    if (lineStart && (m = /^ {{0,3}}(`{{3,}}|~{{3,}})[^\\n]*(\\n|$)/.exec(rest))) {{  // fenced code: copy as is
      const fence = m[1];
      const close = new RegExp("\\\\n {{0,3}}" + fence[0] + "{{" + fence.length + ",}}[ \\\\t]*(?=\\\\n|$)").exec(rest.slice(m[0].length - 1));
      const end = close ? m[0].length - 1 + close.index + close[0].length : rest.length;
      out += rest.slice(0, end); i += end; lineStart = false; continue;
    }}
    const c = src[i];
    if (c === "`") {{  // code span: a run of n backticks closed by a run of exactly n
      const run = /^`+/.exec(rest)[0];
      const close = new RegExp("[^`]" + run + "(?!`)").exec(rest.slice(run.length - 1));
      const end = close ? run.length - 1 + close.index + close[0].length : run.length;
      out += rest.slice(0, end); i += end; lineStart = false; continue;
    }}
    if (c === "\\\\" && src[i + 1] === "$") {{ out += "@@D@@"; i += 2; lineStart = false; continue; }}
    if (c === "\\\\") {{ out += src.slice(i, i + 2); i += 2; lineStart = false; continue; }}
    if (c === "$") {{
      const display = src[i + 1] === "$";
      const delim = display ? "$$" : "$";
      const end = closing(i + delim.length, delim, !display);
      if (end > i + delim.length) {{
        math.push(delim + src.slice(i + delim.length, end) + delim);
        out += "@@" + (math.length - 1) + "@@"; i = end + delim.length; lineStart = false; continue;
      }}
    }}
    out += c; lineStart = c === "\\n"; i++;
  }}
  return [out, math];
}}

function restoreMath(htmlText, math) {{
  return htmlText.replace(/@@(\\d+)@@/g, (_, k) => escapeHtml(math[+k]))
                 .replace(/@@D@@/g, '<span class="lb-literal-dollar">$</span>');
}}

const notebook = document.getElementById("notebook");
cells.forEach((cell, index) => {{
  const div = document.createElement("div");
  div.className = "cell " + cell.type;
  div.dataset.cell = index;
  if (cell.type === "markdown") {{
    const [protectedSrc, math] = protectMath(cell.source);
    div.innerHTML = restoreMath(marked.parse(protectedSrc, {{ gfm: true, breaks: false, async: false }}), math);
    for (const img of div.querySelectorAll("img")) {{
      const src = img.getAttribute("src") || "";
      if (src.startsWith("attachment:") && cell.attachments[src.slice(11)]) img.src = cell.attachments[src.slice(11)];
    }}
  }} else if (cell.type === "code") {{
    div.innerHTML = '<span class="label">cell ' + index + '</span><pre class="src"></pre><div class="out"></div>';
    div.querySelector("pre.src").textContent = cell.source;
    const out = div.querySelector(".out");
    for (const o of cell.outputs) {{
      if (o.image) {{ const img = document.createElement("img"); img.src = o.image; out.appendChild(img); }}
      else if (o.svg) {{ const img = document.createElement("img"); img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(o.svg); out.appendChild(img); }}
      else {{ const pre = document.createElement("pre"); pre.textContent = o.text; if (o.error) pre.className = "error"; out.appendChild(pre); }}
    }}
  }} else {{
    div.innerHTML = '<pre class="src"></pre>';
    div.querySelector("pre").textContent = cell.source;
  }}
  notebook.appendChild(div);
}});

for (const div of notebook.querySelectorAll(".cell.markdown")) {{
  renderMathInElement(div, {{
    delimiters: [{{ left: "$$", right: "$$", display: true }}, {{ left: "$", right: "$", display: false }}],
    ignoredClasses: ["lb-literal-dollar"],
    throwOnError: false,
  }});
}}

// ---- checks that need only the DOM (visibility is judged by Playwright afterwards)
const MYST = [
  ["{{glue", "a glue role/directive"], ["```{{", "a MyST directive fence"], [":::{{", "a MyST colon fence"],
  ["{{prf:", "a sphinx-proof role/directive"], ["{{ref}}", "a {{ref}} role"], ["{{doc}}", "a {{doc}} role"],
  [":label:", "a directive option"], [":class:", "a directive option"],
];
const MYST_RE = [
  [/class="language-\\{{/, "a MyST directive fence (rendered as code)"],
  [/\\{{[a-zA-Z][\\w:+-]*\\}}<code>/, "a MyST role (rendered as {{name}} + code)"],
  [/\\{{[a-zA-Z][\\w:+-]*\\}}`/, "a MyST role"],
  [/(^|\\s):(name|width|height|align|alt|tags|figwidth|figclass|nowrap|enumerated|scale|dropdown|open|selected|widths|header-rows):(\\s|$)/, "a directive option"],
  [/(^|\\n)\\([\\w.:-]+\\)=(\\s|$)/, "a MyST target (label)="],
  [/(^|\\n)%[ \\t]/, "a MyST comment line"],
  [/\\[\\^[^\\]]+\\]/, "footnote syntax (marked/Colab has no footnotes)"],
  [/\\{{\\{{[^}}]*\\}}\\}}/, "a MyST substitution"],
];
const excerpt = (s, k) => JSON.stringify(s.slice(Math.max(0, k - 40), k + 60).replace(/\\s+/g, " "));

async function check() {{
  const problems = [];
  // images: wait for each to load or fail
  const imgs = [...notebook.querySelectorAll("img")];
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  for (const img of imgs) {{
    if (!img.complete || img.naturalWidth === 0) {{
      const src = img.getAttribute("src") || "";
      const cell = img.closest(".cell").dataset.cell;
      const where = src.startsWith(location.origin) || !/^[a-z]+:/i.test(src) ? " (a relative path: Colab has no folder beside the notebook)" : "";
      problems.push(`cell ${{cell}}: image does not load: ${{src.length > 100 ? src.slice(0, 100) + "..." : src}}${{where}}`);
    }}
  }}
  for (const div of notebook.querySelectorAll(".cell.markdown")) {{
    const cell = div.dataset.cell;
    for (const err of div.querySelectorAll(".katex-error"))
      problems.push(`cell ${{cell}}: KaTeX error: ${{err.getAttribute("title") || ""}} in ${{JSON.stringify(err.textContent)}}`);
    const clone = div.cloneNode(true);
    clone.querySelectorAll(".katex, .katex-display, .katex-error, .lb-literal-dollar").forEach(e => e.remove());
    const text = clone.textContent;
    const markup = clone.innerHTML;
    for (const [needle, what] of MYST) {{
      for (const [hay, kind] of [[text, "text"], [markup, "HTML"]]) {{
        const k = hay.indexOf(needle);
        if (k >= 0) {{ problems.push(`cell ${{cell}}: raw MyST ${{JSON.stringify(needle)}} (${{what}}) in the rendered ${{kind}}: ${{excerpt(hay, k)}}`); break; }}
      }}
    }}
    for (const [re, what] of MYST_RE) {{
      for (const [hay, kind] of [[text, "text"], [markup, "HTML"]]) {{
        const m = re.exec(hay);
        if (m) {{ problems.push(`cell ${{cell}}: raw MyST (${{what}}) in the rendered ${{kind}}: ${{excerpt(hay, m.index)}}`); break; }}
      }}
    }}
    const prose = clone.cloneNode(true);
    prose.querySelectorAll("code, pre").forEach(e => e.remove());
    const k = prose.textContent.indexOf("$");
    if (k >= 0) problems.push(`cell ${{cell}}: math left untypeset (a stray $): ${{excerpt(prose.textContent, k)}}`);
    const b = prose.textContent.search(/\\*\\*\\S|\\S\\*\\*|(^|\\n)#{{1,6}} /);
    if (b >= 0) problems.push(`cell ${{cell}}: Markdown left unrendered (inside an HTML block, Markdown needs a blank line ` +
                              `before and after it): ${{excerpt(prose.textContent, b)}}`);
    // "Solution" must be the summary of a closed <details>
    const starts = el => /^Solution\\b/.test(el.textContent.trim());
    const offenders = [];
    for (const el of div.querySelectorAll("*")) {{
      if (!starts(el)) continue;
      const summary = el.closest("summary");
      if (summary && div.contains(summary)) {{
        const details = summary.parentElement;
        if (details.tagName !== "DETAILS" || details.firstElementChild !== summary)
          offenders.push([el, "a <summary> outside a <details>"]);
        else if (details.open)
          offenders.push([el, "the summary of an open <details>"]);
        continue;
      }}
      const inner = el.querySelector("summary");
      if (inner && el.textContent.trim().startsWith(inner.textContent.trim())) continue;  // holds the summary
      offenders.push([el, "not folded in a <details>"]);
    }}
    const flagged = new Set(offenders.map(([el]) => el));
    for (const [el, why] of offenders) {{
      if (el.parentElement && flagged.has(el.parentElement)) continue;  // report the outermost only
      problems.push(`cell ${{cell}}: "Solution" ${{why}}: <${{el.tagName.toLowerCase()}}> ${{excerpt(el.textContent.trim(), 0)}}`);
    }}
  }}
  // mark solution bodies (everything in a closed solution <details> but its summary) for Playwright
  let n = 0;
  for (const details of notebook.querySelectorAll(".cell.markdown details:not([open])")) {{
    const summary = details.firstElementChild;
    if (!summary || summary.tagName !== "SUMMARY" || !/^Solution\\b/.test(summary.textContent.trim())) continue;
    summary.dataset.lbSolution = n;
    for (const node of [...details.childNodes]) {{
      if (node === summary) continue;
      if (node.nodeType === Node.TEXT_NODE && node.textContent.trim()) {{
        const span = document.createElement("span"); details.replaceChild(span, node); span.appendChild(node);
        span.dataset.lbSolutionBody = n;
      }} else if (node.nodeType === Node.ELEMENT_NODE) node.dataset.lbSolutionBody = n;
    }}
    n++;
  }}
  await document.fonts.ready;
  return problems;
}}
const done = () => {{ document.documentElement.dataset.done = "yes"; }};
window.lbProblems = check().then(p => {{ done(); return p; }}, e => {{ done(); return ["check failed: " + e]; }});
</script>
</body></html>
"""


def page_html(nb, title: str) -> str:
    """The HTML page rendering the notebook ``nb`` (an ``nbformat`` node) as Colab would."""
    cells = json.dumps(_cells_json(nb), ensure_ascii=False).replace("</", "<\\/").replace("<!--", "\\u003c!--")
    return PAGE.format(title=html.escape(title), cells=cells)


# --------------------------------------------------------------------------------------------
# Serving (from memory, through Playwright's routing) and checking


class _Router:
    """Answers every request of a page: ``BASE/vendor/...`` from the vendor folder, ``BASE/<name>.html``
    from memory, ``url_map`` prefixes from local folders; anything else is refused and remembered."""

    def __init__(self, vendor: Path, url_map: dict[str, Path] | None):
        self.vendor = vendor.resolve()
        self.url_map = {prefix: Path(folder).resolve() for prefix, folder in (url_map or {}).items()}
        self.pages: dict[str, str] = {}
        self.refused: list[str] = []

    @staticmethod
    def _file(route, folder: Path, rel: str) -> None:
        path = (folder / unquote(rel)).resolve()
        if path.is_file() and path.is_relative_to(folder):
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            route.fulfill(status=200, body=path.read_bytes(), content_type=kind)
        else:
            route.fulfill(status=404, body="not found", content_type="text/plain")

    def __call__(self, route) -> None:
        url = route.request.url
        if url.startswith(BASE):
            rel = urlsplit(url).path.lstrip("/")
            if rel in self.pages:
                route.fulfill(status=200, body=self.pages[rel], content_type="text/html; charset=utf-8")
            elif rel.startswith("vendor/"):
                self._file(route, self.vendor, rel[len("vendor/"):])
            else:  # a relative path in a cell: nothing beside a notebook in Colab
                route.fulfill(status=404, body="not found", content_type="text/plain")
            return
        for prefix, folder in self.url_map.items():
            if url.startswith(prefix):
                self._file(route, folder, urlsplit(url).path[len(urlsplit(prefix).path):])
                return
        self.refused.append(url)
        route.abort()


def _install(page, vendor: Path, url_map) -> _Router:
    router = getattr(page, "_lb_colab_router", None)
    if router is None or router.vendor != vendor.resolve():
        router = _Router(vendor, url_map)
        page.route("**/*", router)
        page._lb_colab_router = router
    router.url_map = {prefix: Path(folder).resolve() for prefix, folder in (url_map or {}).items()}
    return router


def render_notebook(page, notebook: Path, out_dir: Path | None = None, screenshots: bool = False, *,
                    vendor: Path | None = None, url_map: dict[str, Path] | None = None,
                    timeout_ms: int = 60000) -> list[str]:
    """Render ``notebook`` in the Playwright ``page`` as Colab would; the problems found (empty: none).
    ``out_dir``: where the page's HTML (``<stem>.html``) and, with ``screenshots``, ``<stem>.png`` go."""
    import nbformat

    vendor = vendor or vendor_dir()
    router = _install(page, vendor, url_map)
    nb = nbformat.read(notebook, as_version=4)
    name = f"{notebook.stem}.html"
    router.pages[name] = page_html(nb, notebook.name)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / name).write_text(router.pages[name])
    errors: list[str] = []
    on_error = lambda e: errors.append(str(e))  # noqa: E731
    page.on("pageerror", on_error)
    refused_before = len(router.refused)
    try:
        page.goto(BASE + name, wait_until="load")
        page.wait_for_function("() => document.documentElement.dataset.done === 'yes'", timeout=timeout_ms)
        problems = list(page.evaluate("() => window.lbProblems"))
        if out_dir is not None and screenshots:
            page.screenshot(path=str(Path(out_dir) / f"{notebook.stem}.png"), full_page=True)
        problems += _check_solutions(page)
    finally:
        page.remove_listener("pageerror", on_error)
    problems += [f"JavaScript error: {e}" for e in errors]
    problems += [f"request leaving the page (refused; serve it with url_map): {u[:150]}"
                 for u in router.refused[refused_before:]]
    return problems


def _check_solutions(page) -> list[str]:
    """Each folded solution: its body hidden until its summary is clicked, then shown."""
    problems = []
    summaries = page.locator("summary[data-lb-solution]")
    for k in range(summaries.count()):
        summary = summaries.nth(k)
        cell = summary.evaluate("s => s.closest('.cell').dataset.cell")
        bodies = page.locator(f"[data-lb-solution-body='{k}']")
        visible = [bodies.nth(j) for j in range(bodies.count()) if bodies.nth(j).is_visible()]
        if visible:
            problems.append(f"cell {cell}: solution body visible before its summary is clicked: "
                            f"{visible[0].inner_text()[:80]!r}")
            continue
        summary.scroll_into_view_if_needed()
        summary.click()
        if not any(bodies.nth(j).is_visible() for j in range(bodies.count())):
            problems.append(f"cell {cell}: the solution shows nothing when its summary is clicked")
        summary.click()  # fold it again
    return problems


def render_notebooks(page, notebooks: list[Path], out_dir: Path | None = None, screenshots: bool = False, *,
                     vendor: Path | None = None, url_map: dict[str, Path] | None = None) -> dict[str, list[str]]:
    """:func:`render_notebook` for each of ``notebooks``: ``{stem: [problems]}``."""
    vendor = vendor or vendor_dir()
    return {Path(nb).stem: render_notebook(page, Path(nb), out_dir, screenshots, vendor=vendor, url_map=url_map)
            for nb in notebooks}


def report(results: dict[str, list[str]]) -> str:
    """The problems of :func:`render_notebooks` as text, one line each (``""`` when there are none)."""
    return "\n".join(f"{name}: {p}" for name, problems in results.items() for p in problems)

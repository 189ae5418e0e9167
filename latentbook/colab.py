"""The Colab edition: every chapter as a notebook that Colab renders as well as the site renders the page.

Made from the same sources and the same execution as the site (``_executed/<mode>/<chapter>.ipynb``):

- MyST becomes CommonMark: admonitions, theorems and proofs become bold-titled paragraphs or
  quotes; quizzes and solutions fold into ``<details>``; ``{glue:text}`` roles become the published
  run's numbers, each marked ``†``; ``{prf:ref}`` roles become the statement's name (and a link to the
  chapter it is in). Citations (``{cite:t}``, ``{cite:p}``) and the ``{bibliography}`` read as on the site
  (:mod:`latentbook.citations`, from ``references.bib``); a ``{glossary}`` becomes a definition list and a
  ``{term}`` links to the chapter that defines it; ``{ref}``, ``{doc}``, ``{numref}`` and Markdown links to
  other chapters point at those chapters' Colab notebooks. A directive or role this module does not know
  is an error, never raw text.
- The first code cell installs the package at the commit the site was built from (``%pip``) and
  points the store at the published models; the parameters cell is explained (``MODE``, measured times).
- The published outputs stay (figures show before anything runs); widgets and glue records, which
  Colab cannot show from a saved notebook, go. The metadata asks for a GPU.

``student=True`` drops every solution and every quiz answer (:func:`without_solutions` does the same
to the site's sources). Where the notebooks live: ``notebooks/`` (and ``student/notebooks/``) of the
repository's ``colab`` branch, which ``python -m latentbook publish`` commits from ``_build/full/colab``
(see README); the site's Colab buttons open them there.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nbformat

GLUE = re.compile(r"\{glue:text\}`([^`]+)`")
PRF_REF = re.compile(r"\{prf:ref\}`([^`]+)`")
CITE = re.compile(r"\{cite(?::(?P<role>[a-z]+))?\}`(?P<targets>[^`]+)`")  # as latentbook.citations.CITE
TERM = re.compile(r"\{term\}`([^`]+)`")
XREF = re.compile(r"\{(?P<role>ref|numref|doc)\}`(?P<target>[^`]+)`")
EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$")  # {role}`text <target>`
TARGET = re.compile(r"^\((?P<label>[\w.:-]+)\)=\s*$")  # (label)= before a heading
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$")
MD_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^()\s]+)\)")
CODE_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
ANY_ROLE = re.compile(r"\{[a-z][\w:-]*\}`")
OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>.*?)\s*$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):\s*(?P<value>.*?)\s*$")
LABEL = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>prf:[\w-]+|exercise)\}[ \t]*(?P<arg>.*?)\s*\n:label:\s*(?P<label>\S+)",
                   re.M)
PUBLISHED = "<sup>†</sup>"  # marks a number taken from the published run
COLAB_BRANCH = "colab"
KEEP_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "text/plain", "text/latex", "text/markdown")


class ColabError(ValueError):
    """A chapter holds MyST that the Colab edition cannot render."""


@dataclass(frozen=True)
class Release:
    """What a Colab notebook installs and fetches: the repository, the commit, the published models."""

    repository: str  # e.g. https://github.com/org/latentbook (or file:///... in tests)
    commit: str
    models_url: str
    mode: str = "full"

    @property
    def site(self) -> str:
        """The website: the published models live in its ``models/`` folder."""
        return self.models_url.rsplit("models/", 1)[0]

    def colab_url(self, stem: str, student: bool = False) -> str:
        owner_repo = self.repository.removeprefix("https://github.com/").rstrip("/")
        folder = "student/notebooks" if student else "notebooks"
        return f"https://colab.research.google.com/github/{owner_repo}/blob/{COLAB_BRANCH}/{folder}/{stem}.ipynb"


# --------------------------------------------------------------------------------------------
# MyST -> CommonMark


@dataclass
class _Directive:
    name: str
    arg: str
    options: dict
    body: list[str]


def _parse(lines: list[str]) -> list[str | _Directive]:
    """Lines and directives (``:::{name} arg`` / ```` ```{name} arg ````, options, body, closing fence)."""
    out: list[str | _Directive] = []
    i = 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        fence = m["fence"]
        close = re.compile(rf"^{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j, options = i + 1, {}
        while j < len(lines) and (o := OPTION.match(lines[j])):
            options[o["key"]] = o["value"]
            j += 1
        k = j
        while k < len(lines) and not close.match(lines[k]):
            k += 1
        if k == len(lines):
            raise ColabError(f"the directive {{{m['name']}}} opened by {lines[i]!r} is never closed")
        if fence[0] == "`" and _open_code_fence(lines[j:k]):
            raise ColabError(f"the directive {{{m['name']}}} opened by {lines[i]!r} holds a code block whose closing "
                             f"fence ends the directive: open the directive with a longer fence ({'`' * (len(fence) + 1)}"
                             f"{{{m['name']}}}), as MyST needs too")
        out.append(_Directive(m["name"], m["arg"], options, lines[j:k]))
        i = k + 1
    return out


def _open_code_fence(lines: list[str]) -> str | None:
    """The fence of a code block that ``lines`` open and do not close (None if every block closes)."""
    open_fence = None
    for line in lines:
        m = CODE_FENCE.match(line) or OPEN.match(line)
        if not m:
            continue
        if open_fence is None:
            open_fence = m["fence"]
        elif m["fence"][0] == open_fence[0] and len(m["fence"]) >= len(open_fence) and not line.strip().strip("`~:"):
            open_fence = None
    return open_fence


def _glossary(d: _Directive) -> list[tuple[list[str], list[str]]]:
    """A ``{glossary}``'s entries: (terms, definition lines, dedented), sorted if ``:sorted:``."""
    import textwrap

    entries: list[tuple[list[str], list[str]]] = []
    for line in d.body:
        if not line.strip():
            if entries:
                entries[-1][1].append("")
        elif not line[0].isspace():
            if not entries or any(s.strip() for s in entries[-1][1]):
                entries.append(([], []))
            entries[-1][0].append(line.strip().split(" : ")[0])
        elif not entries:
            raise ColabError(f"a {{glossary}} definition before any term: {line.strip()!r}")
        else:
            entries[-1][1].append(line)
    entries = [(terms, _trim(textwrap.dedent("\n".join(body)).splitlines())) for terms, body in entries]
    if "sorted" in d.options:
        entries.sort(key=lambda e: e[0][0].lower())
    return entries


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _inline_html(text: str) -> str:
    """Markdown inline code and emphasis in a title that goes inside HTML (``<summary>``), where
    Markdown is not parsed; math stays as it is (it is typeset from the page's text)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", text)


def _lead(title: str, body: list[str]) -> list[str]:
    """``title`` in bold before the first paragraph of ``body`` (or alone, if that is display math)."""
    body = _trim(body)
    if body and body[0].strip() and not body[0].lstrip().startswith(("$$", "```", "-", "*", "1.", "|", ">", "<")):
        return [f"{title} {body[0]}", *body[1:]]
    return [title, "", *body]


def _details(summary: str, body: list[str]) -> list[str]:
    return ["<details>", f"<summary>{summary}</summary>", "", *_trim(body), "", "</details>"]


class _Converter:
    def __init__(self, stem: str, values: dict[str, str], labels: dict[str, tuple[str, str, str]],
                 titles: dict[str, str], release: Release, student: bool, *, terms: dict[str, str] | None = None,
                 targets: dict[str, tuple[str, str]] | None = None, bib=None, cited: list[str] | None = None):
        self.stem, self.values, self.labels, self.titles = stem, values, labels, titles
        self.release, self.student = release, student
        self.terms = terms or {}  # glossary term (lower case) -> the chapter that defines it
        self.targets = targets or {}  # (label)= target -> (chapter, the heading it labels)
        self.bib = bib  # references.bib (pybtex), for {cite} roles and {bibliography}
        self.cited = cited  # the keys the whole chapter cites (its {bibliography}); None: those seen so far
        self.seen: list[str] = []
        self.exercises: dict[str, int] = {}  # label -> number in this chapter

    def markdown(self, text: str) -> str:
        return "\n".join(self._lines(text.splitlines())).strip("\n")

    def _lines(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence = None  # the fence of the code block we are in: its lines stay as they are
        for item in _parse(lines):
            if not isinstance(item, str):
                out.extend(self._directive(item))
                continue
            m = CODE_FENCE.match(item)
            if fence is None and m:
                fence = m["fence"]
                out.append(item)
            elif fence is not None:
                if m and not m["info"].strip() and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence):
                    fence = None
                out.append(item)
            elif TARGET.match(item):
                continue  # a (label)= target: {ref}s to it name its heading
            else:
                out.append(self._roles(item))
        return out

    def _link(self, text: str, stem: str) -> str:
        """``text``, linked to chapter ``stem``'s Colab notebook unless that is this one."""
        return text if stem == self.stem else f"[{text}]({self.release.colab_url(stem, self.student)})"

    def _cite(self, m) -> str:
        from latentbook import citations

        if self.bib is None:
            raise ColabError(f"{self.stem}: cites {m[0]!r}, but no references.bib was read")
        try:
            self.seen.extend(k for k in citations.cited(m[0]) if k not in self.seen)
            return citations.cite(self.bib, m["role"] or "p", m["targets"])
        except citations.CitationError as e:
            raise ColabError(f"{self.stem}: {m[0]}: {e}") from None

    def _term(self, m) -> str:
        e = EXPLICIT.match(m[1])
        text, term = (e["text"], e["target"]) if e else (m[1], m[1])
        stem = self.terms.get(term.strip().lower())
        if stem is None:
            raise ColabError(f"{self.stem}: {{term}} {term!r} is in no {{glossary}}")
        return self._link(text, stem)

    def _xref(self, m) -> str:
        e = EXPLICIT.match(m["target"])
        text, target = (e["text"], e["target"]) if e else (None, m["target"])
        if m["role"] == "doc":
            stem = Path(target).name.removesuffix(".md").removesuffix(".ipynb")
            if stem not in self.titles:
                raise ColabError(f"{self.stem}: {{doc}} to {target!r}, which is not a chapter")
            return self._link(text or self.titles[stem], stem)
        if target in self.targets:
            stem, title = self.targets[target]
        elif target in self.labels:
            kind, title, stem = self.labels[target]
            title = f"{kind} ({title})" if title else kind
        else:
            raise ColabError(f"{self.stem}: {{{m['role']}}} to an unknown label {target!r}")
        if m["role"] == "numref" and text and re.search(r"%s|\{number\}", text):
            raise ColabError(f"{self.stem}: {{numref}} {m[0]!r}: the Colab edition has no numbers to fill in")
        return self._link(text or title, stem)

    def _md_link(self, m) -> str:
        """``[text](other.md#anchor)`` / ``[text](label)``: to the chapter's Colab notebook."""
        target = m["target"]
        if re.match(r"^[a-z][\w+.-]*:|^#|^/", target):
            return m[0]  # a URL, a same-page anchor or an absolute path: as it is
        path, _, _anchor = target.partition("#")
        stem = Path(path).name.removesuffix(".md").removesuffix(".ipynb")
        if path.endswith((".md", ".ipynb")) and stem in self.titles:
            return self._link(m["text"], stem)
        if not _anchor and target in self.targets:
            return self._link(m["text"], self.targets[target][0])
        if not _anchor and target in self.labels:
            return self._link(m["text"], self.labels[target][2])
        return m[0]  # a relative file (an image): as it is

    def _roles(self, line: str) -> str:
        def glue(m):
            if m[1] not in self.values:
                raise ColabError(f"{self.stem}: the prose glues {m[1]!r}, which its execution does not record")
            return f"{self.values[m[1]]}{PUBLISHED}"

        def ref(m):
            if m[1] not in self.labels:
                raise ColabError(f"{self.stem}: {{prf:ref}} to an unknown label {m[1]!r}")
            kind, title, where = self.labels[m[1]]
            name = f"*{kind} ({title})*" if title else f"*{kind}*"
            if where == self.stem:
                return name
            return f"{name} in [{self.titles[where]}]({self.release.colab_url(where, self.student)})"

        line = PRF_REF.sub(ref, GLUE.sub(glue, line))
        line = CITE.sub(self._cite, line)
        line = TERM.sub(self._term, line)
        line = XREF.sub(self._xref, line)
        line = MD_LINK.sub(self._md_link, line)
        if ANY_ROLE.search(line):
            raise ColabError(f"{self.stem}: a MyST role the Colab edition does not know: {line.strip()!r}")
        return line

    def _directive(self, d: _Directive) -> list[str]:
        body = self._lines(d.body)
        title = self._roles(d.arg)
        if d.name == "admonition":
            if "dropdown" in d.options.get("class", ""):  # a quiz question; its body is the answer
                if self.student:
                    return [f"**Question.** {title}", ""]
                return _details(f"<b>{_inline_html(title)}</b>", body) + [""]
            if any(s.lstrip().startswith(("$$", "```")) for s in body):
                return _lead(f"**{title}.**", body) + [""]
            return [f"> **{title}**", ">", *[f"> {s}" if s else ">" for s in _trim(body)], ""]
        if d.name == "prf:proof":
            body = _trim(body)
            end = ["", "∎"] if body and body[-1].strip().startswith("$$") else []
            if body and not end:
                body[-1] += " ∎"
            return _lead("*Proof.*", body + end) + [""]
        if d.name.startswith("prf:"):
            kind = d.name.split(":", 1)[1].capitalize()
            return _lead(f"**{kind} ({title}).**" if title else f"**{kind}.**", body) + [""]
        if d.name == "exercise":
            number = self.exercises.setdefault(d.options.get("label", f"#{len(self.exercises)}"), len(self.exercises) + 1)
            head = f"**Exercise {number}** ({title})." if title else f"**Exercise {number}.**"
            return _lead(head, body) + [""]
        if d.name == "solution":
            if self.student:
                return []
            number = self.exercises.get(d.arg)
            if number is None:
                raise ColabError(f"{self.stem}: a solution to {d.arg!r}, which is not an exercise before it")
            return _details(f"<b>Solution to Exercise {number}</b>", body) + [""]
        if d.name == "bibliography":
            return self._bibliography(d)
        if d.name == "glossary":
            out = ["<dl>"]
            for terms, definition in _glossary(d):
                out.extend(f"<dt><b>{_inline_html(self._roles(term))}</b></dt>" for term in terms)
                out.extend(["<dd>", "", *self._lines(definition), "", "</dd>"])
            return out + ["</dl>", ""]
        raise ColabError(f"{self.stem}: the Colab edition does not know the directive {{{d.name}}}")

    def _bibliography(self, d: _Directive) -> list[str]:
        """The chapter's reference list: the keys it cites (``:filter: docname in docnames``, the only
        filter the book uses) and those the directive lists, formatted as on the site."""
        from latentbook import citations

        unknown = set(d.options) - {"filter", "style"}
        if unknown or d.options.get("filter", "").split() != ["docname", "in", "docnames"] \
                or d.options.get("style", citations.ENTRY_STYLE) != citations.ENTRY_STYLE:
            raise ColabError(f"{self.stem}: a {{bibliography}} with options {d.options}: the Colab edition knows "
                             "':filter: docname in docnames' (a chapter's own references) only")
        if self.bib is None:
            raise ColabError(f"{self.stem}: a {{bibliography}}, but no references.bib was read")
        keys = [*(self.cited if self.cited is not None else self.seen), *(s.strip() for s in d.body if s.strip())]
        try:
            return [*citations.bibliography(self.bib, keys), ""]
        except citations.CitationError as e:
            raise ColabError(f"{self.stem}: {{bibliography}}: {e}") from None


def without_solutions(text: str) -> str:
    """MyST ``text`` with every ``{solution}`` and every quiz answer (a dropdown admonition's body)
    removed: the student edition of a page."""
    lines = text.splitlines()
    out: list[str] = []
    for item in _parse_keep(lines):
        if isinstance(item, str):
            out.append(item)
        elif item[0].name == "solution":
            continue
        elif item[0].name == "admonition" and "dropdown" in item[0].options.get("class", ""):
            out.extend(["**Question.** " + item[0].arg, ""])
        else:
            out.extend(item[1])
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _keys(targets: str) -> list[str]:
    """The keys of a citation's targets (``{pre}key{post}, key2``)."""
    return [re.sub(r"\{[^{}]*\}", "", t).strip() for t in targets.split(",")]


def _parse_keep(lines: list[str]):
    """Like :func:`_parse`, but each directive comes with its original lines."""
    i = 0
    for item in _parse(lines):
        if isinstance(item, str):
            yield item
            i += 1
        else:
            n = 1 + len(item.options) + len(item.body) + 1
            yield item, lines[i:i + n]
            i += n


# --------------------------------------------------------------------------------------------
# What the notebook needs from the book and its execution


def glued(executed: nbformat.NotebookNode) -> dict[str, str]:
    """``{name: text}`` of every value the execution glued (as ``{glue:text}`` shows it)."""
    values = {}
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            raw = out["data"].get(f"{meta.get('mime_prefix', '')}text/plain")
            if raw is None:
                continue
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            values[meta["name"]] = value if isinstance(value, str) else str(value)
    return values


def labels(root: Path, stems: list[str]) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
    """``({label: (kind, title, stem)}, {stem: chapter title})`` over every chapter's source."""
    found, titles = {}, {}
    for stem in stems:
        text = (root / "book" / f"{stem}.md").read_text()
        heading = re.search(r"^# (.+)$", text, re.M)
        titles[stem] = heading[1].strip() if heading else stem
        for m in LABEL.finditer(text):
            kind = m["name"].split(":")[-1].capitalize()
            found[m["label"]] = (kind, m["arg"], stem)
    return found, titles


@dataclass
class Index:
    """What converting one chapter needs to know about the others."""

    labels: dict[str, tuple[str, str, str]]  # prf/exercise label -> (kind, title, chapter)
    titles: dict[str, str]  # chapter -> its title
    terms: dict[str, str]  # glossary term, lower case -> the chapter whose {glossary} defines it
    targets: dict[str, tuple[str, str]]  # (label)= target -> (chapter, the heading it labels)
    bib: object | None  # references.bib, parsed (None where the checkout has none)


def book_index(root: Path, stems: list[str]) -> Index:
    """The :class:`Index` of the chapters ``stems`` (and ``references.bib``)."""
    found, titles = labels(root, stems)
    terms, targets = {}, {}
    for stem in stems:
        lines = (root / "book" / f"{stem}.md").read_text().splitlines()
        for item in _parse(lines):
            if isinstance(item, _Directive) and item.name == "glossary":
                for names, _ in _glossary(item):
                    terms.update({name.lower(): stem for name in names})
        for i, line in enumerate(lines):
            if m := TARGET.match(line):
                after = next((s for s in lines[i + 1:] if s.strip()), "")
                heading = HEADING.match(after)
                targets[m["label"]] = (stem, heading["title"] if heading else titles[stem])
    bib = None
    if (root / "references.bib").is_file():
        from latentbook import citations

        bib = citations.load(root)
    return Index(found, titles, terms, targets, bib)


def chapter_times(root: Path, stem: str) -> str:
    """What the parameters cell says about time: measured figures from ``benchmarks/results``."""
    parts = []
    results = root / "benchmarks" / "results"
    try:
        runs = json.loads((results / "published_weights.json").read_text())["runs"]
        # the newest run that measured this chapter (a run may measure only the chapters it names)
        run = next(r for r in reversed(runs) if stem in r["per_chapter"])
        cold = run["per_chapter"][stem]["cold_s"]
        parts.append(f"with the published models, about {cold:.0f} s on a {run['machine']['cpu_count']}-core CPU "
                     f"(measured {run['date'][:10]}, a fresh runtime fetching them)")
    except (OSError, KeyError, StopIteration, ValueError):
        pass
    try:
        table = (results / "full_build_cold.txt").read_text()
        m = re.search(rf"^{re.escape(stem)}\s+([\d.]+)\s+executed", table, re.M)
        date = re.search(r"^# (\d{4}-\d\d-\d\d)", table, re.M)
        if m:
            minutes = float(m[1]) / 60
            spent = f"{minutes:.0f} min" if minutes >= 1.5 else f"{float(m[1]):.0f} s"
            parts.append(f"training everything itself (nothing published), about {spent} on a 2-core CPU"
                         + (f" (measured {date[1]})" if date else ""))
    except OSError:
        pass
    if not any(p.startswith("training") for p in parts):
        # chapters newer than the cold full build: their own budget benchmark (earlier chapters' models stored)
        try:
            runs = json.loads((results / "chapter_budget.json").read_text())["runs"]
            run = next(r for r in reversed(runs) if stem in r["per_chapter"])
            cold = run["per_chapter"][stem]["cold_s"]
            spent = f"{cold / 60:.0f} min" if cold >= 90 else f"{cold:.0f} s"
            parts.append(f"training its own models (nothing published; the earlier chapters' models stored), "
                         f"about {spent} on a {run['machine']['cpu_count']}-core CPU (measured {run['date'][:10]})")
        except (OSError, KeyError, StopIteration, ValueError):
            pass
    gpu = results / "gpu_build.json"
    if gpu.is_file():
        try:
            seconds = json.loads(gpu.read_text())["per_chapter"][stem]
            parts.append(f"on a GPU, about {seconds:.0f} s")
        except (KeyError, ValueError):
            pass
    else:
        parts.append("on a GPU: not measured yet")
    return "; ".join(parts)


def install_cell(release: Release) -> str:
    """The first code cell: install the package at the built commit, where it is not installed."""
    spec = f"latentbook @ git+{release.repository}@{release.commit}"
    return f'''\
# Installs latentbook as it was when this notebook was built (commit {release.commit[:12]}),
# and says whether pip changed anything the runtime had. Where latentbook is installed, it does nothing.
import importlib, importlib.metadata as metadata, importlib.util, os

os.environ.setdefault("LATENTBOOK_MODELS_URL", "{release.models_url}")  # fetched, not trained
if importlib.util.find_spec("latentbook") is None:
    print("installing latentbook at commit {release.commit[:12]} (about a minute) ...")
    had = {{d.name: d.version for d in metadata.distributions()}}
    %pip install --progress-bar off "{spec}"
    importlib.invalidate_caches()
    if importlib.util.find_spec("latentbook") is None:
        raise RuntimeError("pip could not install latentbook: its message is above")
    now = {{d.name: d.version for d in metadata.distributions()}}
    changed = [f"{{n}} {{v}} -> {{now.get(n)}}" for n, v in had.items() if now.get(n) != v]
    print("pip changed", changed, "- restart the runtime (Runtime > Restart session) and run from the top"
          if changed else "installed; nothing the runtime had was changed, no restart needed")
else:
    print("latentbook", metadata.version("latentbook"), "is installed here; nothing to do")
'''


def settings_markdown(root: Path, stem: str, release: Release) -> str:
    times = chapter_times(root, stem)
    return (
        "**Settings of this run.** The next cell holds the chapter's parameters; change them and run the notebook "
        "from the top.\n\n"
        '- `MODE = "full"` runs the chapter as published'
        + (": the numbers in the text (marked †) are this mode's. " if release.mode == "full" else ". ")
        + "Trained models come from the published book instead of being trained again. "
        f"Time: {times}.\n"
        '- `MODE = "smoke"` runs every cell on a small subset with short training, in well under a minute: it checks '
        "that everything works, and its numbers differ from the text.\n"
        '- `DEVICE = "auto"` uses a GPU when the runtime has one (Runtime > Change runtime type), else the CPU; '
        '`"cuda"` insists on one. `DATASET` is `"mnist"` or `"fashion-mnist"`; `SEED` seeds everything.'
    )


def header_markdown(stem: str, release: Release, student: bool) -> str:
    page = f"{release.site}notebooks/{stem}.html"
    edition = " Student edition: solutions and quiz answers are left out." if student else ""
    return (
        f"*latentbook*, the Colab edition of [this chapter's page]({page}), built from commit "
        f"`{release.commit[:12]}` of [the repository]({release.repository}).{edition} Numbers marked † in the "
        f"text come from the published run ({release.mode} mode); the cells print this run's. Run the cells in "
        "order from the top: the first installs the `latentbook` package."
    )


# --------------------------------------------------------------------------------------------
# The notebook


def _outputs(cell) -> list:
    kept = []
    for out in cell.get("outputs", []):
        if out.get("metadata", {}).get("scrapbook"):
            continue  # a glue record: its value is in the prose
        if out["output_type"] in ("display_data", "execute_result"):
            data = {k: v for k, v in out["data"].items() if k in KEEP_MIMES}
            if "application/vnd.jupyter.widget-view+json" in out["data"]:
                continue  # a saved widget is dead in Colab; running the cell brings it back
            if not data:
                continue
            out = nbformat.from_dict({**out, "data": data, "metadata": {}})
        kept.append(out)
    return kept


def notebook(root: Path, stem: str, executed: Path, release: Release, *, student: bool = False,
             index: Index | None = None) -> nbformat.NotebookNode:
    """The Colab notebook of chapter ``stem`` from its execution ``executed`` (an ``.ipynb``)."""
    run = nbformat.read(executed, as_version=4)
    index = index or book_index(root, [stem])
    shown = "\n".join(without_solutions(c.source) if student else c.source
                      for c in run.cells if c.cell_type == "markdown")
    cited = list(dict.fromkeys(k for m in CITE.finditer(shown) for k in _keys(m["targets"])))
    convert = _Converter(stem, glued(run), index.labels, index.titles, release, student, terms=index.terms,
                         targets=index.targets, bib=index.bib, cited=cited)
    cells = [nbformat.v4.new_markdown_cell(header_markdown(stem, release, student))]
    installed = False
    for cell in run.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            text = convert.markdown(cell.source)
            if text.strip():
                cells.append(nbformat.v4.new_markdown_cell(text))
            continue
        if cell.cell_type != "code" or "injected-parameters" in tags:
            continue  # papermill's record of the values it ran with: the parameters cell says them
        if not installed:
            cells.append(nbformat.v4.new_code_cell(install_cell(release)))
            installed = True
        if "parameters" in tags:
            cells.append(nbformat.v4.new_markdown_cell(settings_markdown(root, stem, release)))
            new = nbformat.v4.new_code_cell(cell.source, metadata={"tags": ["parameters"]})
        else:
            new = nbformat.v4.new_code_cell(cell.source)
            new.outputs = _outputs(cell)
            new.execution_count = cell.get("execution_count")
        cells.append(new)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
        "kernelspec": {"name": "python3", "display_name": "Python 3"},
        "language_info": {"name": "python"},
        "latentbook": {"chapter": stem, "commit": release.commit, "mode": release.mode, "student": student},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stem[:40]}-{i}"  # stable ids: the same build writes the same bytes
    return nb


def write(root: Path, executed_dir: Path, out_dir: Path, release: Release, *, stems: list[str],
          student: bool = False) -> list[Path]:
    """Every chapter's Colab notebook into ``out_dir`` (written whole, atomically)."""
    from latentbook import store

    index = book_index(root, stems)
    paths = []
    for stem in stems:
        nb = notebook(root, stem, executed_dir / f"{stem}.ipynb", release, student=student, index=index)
        path = out_dir / f"{stem}.ipynb"
        store.write_text(path, nbformat.writes(nb) + "\n")
        paths.append(path)
    return paths


def release_from_checkout(root: Path, mode: str = "full") -> Release:
    """The release this checkout would publish: ``_config.yml``'s addresses and the HEAD commit."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "main"  # not a git checkout (an unpacked archive): the install follows the main branch
    models_url = str((config.get("latentbook") or {}).get("models_url") or "")
    return Release(str((config.get("repository") or {}).get("url") or "").rstrip("/"), commit,
                   models_url if models_url.endswith("/") else models_url + "/", mode)

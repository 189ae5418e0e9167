"""The book's references, formatted one way on the site and in the Colab edition.

One ``references.bib`` at the repository's root. Chapters cite with ``{cite:t}`key``` ("Kingma and
Welling (2014)") and ``{cite:p}`a,b``` ("(Kingma and Welling, 2014; Burda et al., 2016)"); each chapter's
``## References`` is a ``{bibliography}`` of what that page cites (``:filter: docname in docnames``),
plus any keys listed in the directive's body. The site is built by sphinxcontrib-bibtex with this
module loaded as a Sphinx extension (``_config.yml``): it registers the entry style :class:`Style`
(authors (year). title. venue. link) as ``latentbook`` and the round-bracket author–year citation
style as ``latentbook_author_year``. The Colab edition (:mod:`latentbook.colab`) formats citations
and reference lists with the same two styles (:func:`cite`, :func:`bibliography`), into Markdown.

Only the book build needs this module (pybtex and sphinxcontrib-bibtex are in the ``book`` extra).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pybtex.richtext import BaseMultipartText, HRef, String, Symbol, Tag
from pybtex.style.formatting.unsrt import Style as _Unsrt
from pybtex.style.formatting.unsrt import dashify
from pybtex.style.formatting import toplevel
from pybtex.style.template import field, href, join, optional, sentence, tag
from sphinxcontrib.bibtex.style.referencing import BracketStyle, format_references
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.template import SphinxReferenceInfo

BIBFILE = "references.bib"
ENTRY_STYLE = "latentbook"
REFERENCE_STYLE = "latentbook_author_year"
CITE = re.compile(r"\{cite(?::(?P<role>[a-z]+))?\}`(?P<targets>[^`]+)`")


class Style(_Unsrt):
    """An entry as the chapters always listed them: authors (year). Title. *Venue* volume(number),
    pages. A link to arXiv (``eprint``) or ``url``. Titles as printed in the file (no case change);
    sorted by author, year, title; alpha labels (the site's citation anchors)."""

    default_sorting_style = "author_year_title"
    default_label_style = "alpha"

    def _head(self):
        return sentence[join[self.format_names("author", as_sentence=False), " (", field("year"), ")"]]

    def _link(self):
        return optional[sentence[self.format_eprint(None)]]

    def _tail(self):
        url = field("url", raw=True)
        return [optional[sentence[field("note")]], self._link(), optional[sentence[href(url)[url]]]]

    def get_article_template(self, e):
        venue = join[tag("em")[field("journal")], optional[" ", field("volume")], optional["(", field("number"), ")"]]
        return toplevel[self._head(), sentence[field("title")],
                        sentence[venue, optional[field("pages", apply_func=dashify)]], *self._tail()]

    def get_inproceedings_template(self, e):
        return toplevel[self._head(), sentence[field("title")],
                        sentence[join["In ", tag("em")[field("booktitle")]]], *self._tail()]

    def get_incollection_template(self, e):
        return toplevel[self._head(), sentence[field("title")],
                        sentence[join["In ", tag("em")[field("booktitle")]], optional[join["vol. ", field("volume")]],
                                 optional[field("publisher")]], *self._tail()]

    def get_book_template(self, e):
        return toplevel[self._head(), sentence[tag("em")[field("title")], optional[join[field("edition"), " edition"]]],
                        optional[sentence[field("publisher")]], *self._tail()]

    def get_misc_template(self, e):
        return toplevel[self._head(), sentence[field("title")], optional[sentence[field("howpublished")]],
                        *self._tail()]


_round = dict(left="(", right=")")


@dataclasses.dataclass
class ReferenceStyle(AuthorYearReferenceStyle):
    """Author–year citations in round brackets: ``{cite:t}`` "Kingma and Welling (2014)",
    ``{cite:p}`` "(Kingma and Welling, 2014; Burda et al., 2016)"."""

    bracket_textual: BracketStyle = dataclasses.field(
        default_factory=lambda: BracketStyle(**_round, sep=", ", sep2=" and ", last_sep=", and "))
    bracket_parenthetical: BracketStyle = dataclasses.field(default_factory=lambda: BracketStyle(**_round, sep="; "))
    bracket_author: BracketStyle = dataclasses.field(default_factory=lambda: BracketStyle(**_round))
    bracket_label: BracketStyle = dataclasses.field(default_factory=lambda: BracketStyle(**_round))
    bracket_year: BracketStyle = dataclasses.field(default_factory=lambda: BracketStyle(**_round))


def register() -> None:
    """Make both styles known by name to pybtex and sphinxcontrib-bibtex (idempotent)."""
    import pybtex.plugin
    import sphinxcontrib.bibtex.plugin

    for group, name, cls, register_plugin in (
            ("pybtex.style.formatting", ENTRY_STYLE, Style, pybtex.plugin.register_plugin),
            ("sphinxcontrib.bibtex.style.referencing", REFERENCE_STYLE, ReferenceStyle,
             sphinxcontrib.bibtex.plugin.register_plugin)):
        try:
            register_plugin(group, name, cls)
        except Exception:  # already registered: a second Sphinx run in the same process
            pass


def setup(app):
    """The Sphinx extension: registers the styles before sphinxcontrib-bibtex looks them up."""
    register()
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# --------------------------------------------------------------------------------------------
# Markdown, for the Colab edition


class CitationError(ValueError):
    """A citation of a key the bibliography does not hold, or in a form the book does not use."""


def load(root: Path):
    """The parsed ``references.bib`` (a pybtex ``BibliographyData``)."""
    from pybtex.database import parse_file

    return parse_file(str(root / BIBFILE), bib_format="bibtex")


def markdown(text) -> str:
    """pybtex rich text as Markdown: ``em`` → ``*...*``, links → ``[text](url)``."""
    if isinstance(text, str):
        return re.sub(r"([\\`*_\[\]])", r"\\\1", text)
    if isinstance(text, String):
        return markdown(text.value)
    if isinstance(text, Symbol):
        return {"nbsp": "\u00a0", "ndash": "–", "newblock": " "}.get(text.name, "")
    inner = "".join(markdown(part) for part in text.parts)
    if isinstance(text, Tag):
        mark = {"em": "*", "i": "*", "strong": "**", "b": "**"}.get(text.name, "")
        return f"{mark}{inner}{mark}" if inner else ""
    if isinstance(text, HRef):
        return f"[{inner}]({text.url})"
    if isinstance(text, BaseMultipartText):
        return inner
    raise TypeError(f"cannot write {type(text).__name__} as Markdown")


def _formatted(bib, keys: list[str]):
    missing = [key for key in keys if key not in bib.entries]
    if missing:
        raise CitationError(f"{BIBFILE} has no entry {', '.join(map(repr, missing))}")
    return list(Style().format_entries([bib.entries[key] for key in dict.fromkeys(keys)]))


def cite(bib, role: str, targets: str) -> str:
    """``{cite:<role>}`targets``` as the site writes it, in Markdown: several keys in the order of the
    reference list (author, year, title), as sphinxcontrib-bibtex resolves them."""
    from sphinxcontrib.bibtex.citation_target import parse_citation_targets

    style = ReferenceStyle()
    if role not in style.role_style:
        raise CitationError(f"unknown citation role {{cite:{role}}}")
    try:
        parsed = list(parse_citation_targets(targets))
    except ValueError as e:
        raise CitationError(str(e)) from None
    formatted = {f.key: f for f in _formatted(bib, [t.key for t in parsed])}
    order = list(formatted)  # the site lists a citation's keys in its bibliography's order, not as written
    parsed.sort(key=lambda t: order.index(t.key))
    refs = [(bib.entries[t.key], formatted[t.key],
             SphinxReferenceInfo(None, "", "", "", None, t.pre, t.post)) for t in parsed]
    return markdown(format_references(style, role, refs))


def cited(text: str) -> list[str]:
    """The keys ``text`` cites, in order of first citation."""
    from sphinxcontrib.bibtex.citation_target import parse_citation_targets

    keys = []
    for m in CITE.finditer(text):
        keys.extend(t.key for t in parse_citation_targets(m["targets"]))
    return list(dict.fromkeys(keys))


def bibliography(bib, keys: list[str]) -> list[str]:
    """The reference list of ``keys`` (sorted as on the site): one Markdown bullet per entry."""
    return [f"- {markdown(entry.text)}" for entry in _formatted(bib, keys)]

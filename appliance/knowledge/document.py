"""A manual as its readers see it: a title and sections of paragraphs, with heading paths.

Every format reader feeds a :class:`DocumentBuilder` with headings, paragraphs and (for
PDFs) page changes, and gets one :class:`Document` back, so that the rules about titles and
section paths live in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SEPARATOR = " > "
"""Joins the titles of a section path: ``Maintenance > Filters``."""

_LINE_START = re.compile(r"^(?:[-*+•]\s|\d+[.)]\s|[a-z][.)]\s|\.\s|\|)")
_SPACES = re.compile(r"[ \t\u00a0]+")


@dataclass(frozen=True)
class Section:
    """Consecutive paragraphs under one heading path, all on one page (for paged formats)."""

    path: tuple[str, ...]
    paragraphs: tuple[str, ...]
    page: int | None = None

    @property
    def title(self) -> str:
        """The path as one string, outermost first."""
        return SEPARATOR.join(self.path)


@dataclass(frozen=True)
class Document:
    """A parsed manual: its own title (if it names one) and its sections in reading order."""

    title: str | None
    sections: tuple[Section, ...]
    pages: int | None = None


def clean(text: str) -> str:
    """One line of text with runs of spaces collapsed and the ends trimmed."""
    return _SPACES.sub(" ", text).strip()


def join_lines(lines: list[str]) -> str:
    """The lines of one paragraph as text: wrapped prose joined, list items and rows kept apart."""
    out: list[str] = []
    for raw in lines:
        line = clean(raw)
        if not line:
            continue
        if out and not _LINE_START.match(line):
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
    return "\n".join(out)


@dataclass
class DocumentBuilder:
    """Collects headings and paragraphs in reading order and builds the :class:`Document`.

    Levels are the format's own (1 for ``#`` or ``<h1>``, and so on); a skipped level is
    fine. Level 0 is an explicit document title. When no explicit title was given and the
    first heading is the only one at its level, it is taken as the document's title, as
    docutils and most manuals do, and left out of the section paths.
    """

    title: str | None = None
    pages: int | None = None
    # A title the file declares besides its headings (HTML <title>, PDF metadata): it names
    # the document, and does not stop a lone first heading from being taken as the title.
    named: str | None = None
    _headings: list[tuple[int, str]] = field(default_factory=list)
    # (heading index or -1 for text before any heading, page, paragraphs)
    _runs: list[tuple[int, int | None, list[str]]] = field(default_factory=list)
    _page: int | None = None

    def heading(self, level: int, text: str) -> None:
        """A heading of ``level``; empty headings are ignored."""
        text = clean(text)
        if not text:
            return
        if level == 0:
            self.title = self.title or text
            return
        self._headings.append((level, text))
        self._runs.append((len(self._headings) - 1, self._page, []))

    def page(self, number: int) -> None:
        """The text that follows is on page ``number`` (1-based)."""
        self._page = number
        current = self._runs[-1][0] if self._runs else -1
        self._runs.append((current, number, []))

    def paragraph(self, text: str) -> None:
        """A paragraph of the current section; blank ones are ignored."""
        text = text.strip()
        if not text:
            return
        if not self._runs:
            self._runs.append((-1, self._page, []))
        self._runs[-1][2].append(text)

    def build(self) -> Document:
        """The document: heading paths resolved, empty runs dropped."""
        headings = self._headings
        skip_first = False
        if headings and self.title is None:
            first_level = headings[0][0]
            text_before = any(p for h, _page, p in self._runs if h == -1)
            if (not text_before and first_level == min(lv for lv, _ in headings)
                    and sum(1 for lv, _ in headings if lv == first_level) == 1):
                self.title, skip_first = headings[0][1], True
        paths: list[tuple[str, ...]] = []
        stack: list[tuple[int, str]] = []
        for index, (level, text) in enumerate(headings):
            while stack and stack[-1][0] >= level:
                stack.pop()
            if not (skip_first and index == 0):
                stack.append((level, text))
            paths.append(tuple(t for _lv, t in stack))
        sections = tuple(
            Section(paths[h] if h >= 0 else (), tuple(paras), page)
            for h, page, paras in self._runs if paras)
        return Document(self.named or self.title, sections, self.pages)

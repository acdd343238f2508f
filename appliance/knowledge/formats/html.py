"""HTML: ``<h1>`` to ``<h6>`` headings, block elements as paragraphs, page furniture skipped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from appliance.knowledge.document import Document, DocumentBuilder, clean

_SKIPPED = {"script", "style", "nav", "footer", "noscript", "template", "svg", "head", "aside",
            "form", "button", "select", "title"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source",
         "track", "wbr"}
_BLOCKS = {"p", "div", "section", "article", "main", "header", "blockquote", "pre", "ul", "ol",
           "dl", "table", "figure", "figcaption", "details", "summary", "address", "body"}
_LINES = {"li", "tr", "dt", "dd", "br", "caption"}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.doc = DocumentBuilder()
        self.skipping: list[str] = []     # open skipped elements
        self.lines: list[str] = []        # the paragraph being built, one entry per line
        self.heading: tuple[int, list[str]] | None = None
        self.title: list[str] | None = None
        self.pre = 0

    def _text(self) -> list[str]:
        """The lines that text goes to now (a heading's or the paragraph's); never empty."""
        target = self.heading[1] if self.heading is not None else self.lines
        if not target:
            target.append("")
        return target

    def _newline(self) -> None:
        if self.lines and self.lines[-1].strip():
            self.lines.append("")

    def _flush(self) -> None:
        text = "\n".join(line for line in (clean(x) if not self.pre else x.strip("\n")
                                           for x in self.lines) if line)
        self.doc.paragraph(text)
        self.lines = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title" and self.title is None:
            self.title = []
        if self.skipping or tag in _SKIPPED:
            if tag not in _VOID:
                self.skipping.append(tag)
            return
        if tag in _HEADINGS:
            self._flush()
            self.heading = (_HEADINGS[tag], [])
        elif tag in _BLOCKS:
            self._flush()
            self.pre += tag == "pre"
        elif tag in _LINES:
            self._newline()
            if tag == "li":
                self._text()[-1] += "- "
        elif tag in ("td", "th") and self._text()[-1].strip():
            self._text()[-1] += " | "

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag in self.skipping:
                while self.skipping.pop() != tag:
                    pass
            return
        if tag in _HEADINGS and self.heading is not None:
            self.doc.heading(self.heading[0], clean(" ".join(self.heading[1])))
            self.heading = None
        elif tag in _BLOCKS:
            self._flush()
            self.pre -= tag == "pre" and self.pre > 0
        elif tag in _LINES:
            self._newline()

    def handle_data(self, data: str) -> None:
        if self.title is not None and self.doc.title is None and self.skipping[-1:] == ["title"]:
            self.title.append(data)
            return
        if self.skipping:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        self._text()[-1] += data

    def close(self) -> None:
        super().close()
        self._flush()
        if self.title:
            self.doc.named = clean(" ".join(self.title))


def read(text: str) -> Document:
    """Parse an HTML manual."""
    parser = _Parser()
    parser.feed(text)
    parser.close()
    return parser.doc.build()

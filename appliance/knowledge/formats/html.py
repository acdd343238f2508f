"""HTML: ``<h1>`` to ``<h6>`` headings, block elements as paragraphs, page furniture skipped.

The markup is split by our own tokenizer rather than :mod:`html.parser`, whose tag patterns
rescan to the end of the page from every unclosed ``<a`` (20 KB of them took 13 s here).
Each token here is one match of a pattern that always ends where its scan ended: an
unclosed tag, comment or quoted value runs to the end of the text and is dropped, as a
browser drops it, so nothing is scanned twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape

from appliance.knowledge.document import Document, DocumentBuilder, clean

_SKIPPED = {"script", "style", "nav", "footer", "noscript", "template", "svg", "head", "aside",
            "form", "button", "select", "title"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source",
         "track", "wbr"}
_BLOCKS = {"p", "div", "section", "article", "main", "header", "blockquote", "pre", "ul", "ol",
           "dl", "table", "figure", "figcaption", "details", "summary", "address", "body"}
_LINES = {"li", "tr", "dt", "dd", "br", "caption"}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_RAW = ("script", "style")
"""Elements whose content is text up to their end tag, not markup."""

_MARKUP = re.compile(r"""
    <!--.*?(?:-->|\Z)                                      # a comment
  | <(?P<end>/?)(?P<name>[A-Za-z][^\s/>]*)                 # a tag: its name,
    (?P<attrs>(?:=\s*(?:"[^"]*"?|'[^']*'?)|[^>])*+)(?P<closed>>)?  # attributes, its end
  | <[!?/][^>]*>?                                          # <!DOCTYPE>, <?xml?>, </ >
""", re.S | re.X)
_RAW_END = {name: re.compile(rf"</{name}(?=[\s/>]|\Z)", re.I) for name in _RAW}


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """``("start" | "end", tag name)`` and ``("data", text)`` of a page, in order."""
    pending = search = 0   # where the text not yet given starts; where to look for "<"
    while (lt := text.find("<", search)) >= 0:
        m = _MARKUP.match(text, lt)
        if m is None:      # a "<" that starts no markup is text
            search = lt + 1
            continue
        if lt > pending:
            yield "data", unescape(text[pending:lt])
        pending = search = m.end()
        if not m["name"] or not m["closed"]:
            continue       # a comment or declaration, or a tag the text ends in
        name = m["name"].lower()
        if m["end"]:
            yield "end", name
            continue
        yield "start", name
        if m["attrs"].rstrip().endswith("/"):
            yield "end", name
        elif name in _RAW:
            close = _RAW_END[name].search(text, pending)
            raw_end = close.start() if close else len(text)
            if raw_end > pending:
                yield "data", text[pending:raw_end]
            pending = search = raw_end
    if pending < len(text):
        yield "data", unescape(text[pending:])


class _Parser:
    def __init__(self) -> None:
        self.doc = DocumentBuilder()
        self.skipping: list[str] = []     # open skipped elements
        self.lines: list[list[str]] = []  # the paragraph being built: each line's pieces
        self.filled = False               # the current line or heading has more than spaces
        self.heading: tuple[int, list[str]] | None = None
        self.title: list[str] | None = None
        self.pre = 0

    def _text(self) -> list[str]:
        """The pieces that text goes to now (a heading's or the paragraph's last line)."""
        if self.heading is not None:
            return self.heading[1]
        if not self.lines:
            self.lines.append([])
        return self.lines[-1]

    def _append(self, text: str) -> None:
        self._text().append(text)
        self.filled = self.filled or bool(text.strip())

    def _newline(self) -> None:
        if self.lines and self.filled:
            self.lines.append([])
            self.filled = False

    def _flush(self) -> None:
        lines = ("".join(pieces) for pieces in self.lines)
        text = "\n".join(line for line in (clean(x) if not self.pre else x.strip("\n")
                                           for x in lines) if line)
        self.doc.paragraph(text)
        self.lines, self.filled = [], False

    def start(self, tag: str) -> None:
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
                self._append("- ")
        elif tag in ("td", "th") and self.filled:
            self._append(" | ")

    def end(self, tag: str) -> None:
        if self.skipping:
            if tag in self.skipping:
                while self.skipping.pop() != tag:
                    pass
            return
        if tag in _HEADINGS and self.heading is not None:
            self.doc.heading(self.heading[0], clean("".join(self.heading[1])))
            self.heading, self.filled = None, False
        elif tag in _BLOCKS:
            self._flush()
            self.pre -= tag == "pre" and self.pre > 0
        elif tag in _LINES:
            self._newline()

    def data(self, data: str) -> None:
        if self.title is not None and self.doc.title is None and self.skipping[-1:] == ["title"]:
            self.title.append(data)
            return
        if self.skipping:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
        self._append(data)

    def close(self) -> None:
        self._flush()
        if self.title:
            self.doc.named = clean(" ".join(self.title))


def read(text: str) -> Document:
    """Parse an HTML manual."""
    parser = _Parser()
    for kind, value in _tokens(text):
        getattr(parser, kind)(value)
    parser.close()
    return parser.doc.build()

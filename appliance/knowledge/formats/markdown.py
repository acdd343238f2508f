"""Markdown: ATX (``#``) and setext (underlined) headings, fenced code, lists and tables."""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines

_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S+")
_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),          # images: their alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),           # links: their text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),          # reference links
    (re.compile(r"<(https?://[^>]+)>"), r"\1"),
    (re.compile(r"</?[A-Za-z][^>]*>"), ""),                  # inline HTML tags
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?!\w)"), r"\1"),
    (re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?!\w)"), r"\1"),
    (re.compile(r"`+([^`]+)`+"), r"\1"),
]


def inline(text: str) -> str:
    """Markdown inline markup removed, leaving the words."""
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def _line(line: str) -> str:
    line = re.sub(r"^\s{0,3}>\s?", "", line)  # block quotes
    if line.lstrip().startswith("|"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        return "| " + " | ".join(inline(c) for c in cells)
    return inline(line)


def read(text: str) -> Document:
    """Parse a Markdown manual."""
    doc = DocumentBuilder()
    para: list[str] = []
    fence: str | None = None

    def flush() -> None:
        doc.paragraph(join_lines(para))
        para.clear()

    for line in text.splitlines():
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
                doc.paragraph("\n".join(para))
                para.clear()
            else:
                para.append(line)
            continue
        if m := _FENCE.match(line):
            flush()
            fence = m.group(1)[0] * 3
        elif m := _ATX.match(line):
            flush()
            doc.heading(len(m.group(1)), inline(m.group(2)))
        elif para and (m := _SETEXT.match(line)) and len(para) == 1:
            doc.heading(1 if m.group(1)[0] == "=" else 2, inline(para.pop()))
        elif not line.strip():
            flush()
        elif not (_TABLE_RULE.match(line) or _REFERENCE.match(line)):
            para.append(_line(line))
    if fence is not None:
        doc.paragraph("\n".join(para))
    else:
        flush()
    return doc.build()

"""Markdown: ATX (``#``) and setext (underlined) headings, fenced code, lists and tables."""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines
from appliance.knowledge.formats.inline import Emphasis, Step, Wrapped, apply, substitute

_ATX = re.compile(r" {0,3}(#{1,6})\s")
_CLOSING_HASHES = re.compile(r"(?:^|\s)#+$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_RULE = re.compile(r"\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?")  # on a stripped line
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S+")
# Every step is linear in the line's length (see appliance.knowledge.formats.inline).
_INLINE: list[Step] = [
    Wrapped(r"!\[([^\]]*)(?:\]\([^)]*(\))?)?", lambda m: m[1], 2),    # images: alt text
    Wrapped(r"\[([^\]]+)(?:\]\([^)]*(\))?)?", lambda m: m[1], 2),     # links: their text
    Wrapped(r"\[([^\]]+)(?:\]\[[^\]]*(\])?)?", lambda m: m[1], 2),    # reference links
    Wrapped(r"<(https?://[^>]+)(>)?", lambda m: m[1], 2),
    Wrapped(r"</?[A-Za-z][^>]*(>)?", lambda m: "", 1),                # inline HTML tags
    Emphasis(("**", "__"), open_after=r"\S", close_before=r"(?<=\S)"),
    Emphasis(("*",), open_before=r"(?<![\w*])", open_after=r"\S", close_before=r"(?<=\S)",
             close_after=r"(?!\w)"),
    Emphasis(("_",), open_before=r"(?<![\w_])", open_after=r"\S", close_before=r"(?<=\S)",
             close_after=r"(?!\w)"),
    substitute(r"(?<!`)`+([^`]+)`+", r"\1"),  # from the start of a run of backticks only
]


def inline(text: str) -> str:
    """Markdown inline markup removed, leaving the words."""
    return apply(_INLINE, text)


def _heading(line: str) -> tuple[int, str] | None:
    """``(level, text)`` of an ATX heading line (``## Title ##``), else None."""
    m = _ATX.match(line)
    if m is None:
        return None
    text = line[m.end():].strip()
    if closing := _CLOSING_HASHES.search(text):
        text = text[:closing.start()].rstrip()
    return len(m.group(1)), text


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
        elif heading := _heading(line):
            flush()
            doc.heading(heading[0], inline(heading[1]))
        elif para and (m := _SETEXT.match(line)) and len(para) == 1:
            doc.heading(1 if m.group(1)[0] == "=" else 2, inline(para.pop()))
        elif not line.strip():
            flush()
        elif not (_TABLE_RULE.fullmatch(line.strip()) or _REFERENCE.match(line)):
            para.append(_line(line))
    if fence is not None:
        doc.paragraph("\n".join(para))
    else:
        flush()
    return doc.build()

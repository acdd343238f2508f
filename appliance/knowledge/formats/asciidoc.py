"""AsciiDoc: ``=`` document title and header, ``==`` to ``======`` section titles, blocks."""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines
from appliance.knowledge.formats.inline import Emphasis, Step, Wrapped, apply, substitute

_TITLE = re.compile(r"(={1,6})\s+(\S.*)")
_DELIMITER = re.compile(r"^(-{4,}|\.{4,}|={4,}|\*{4,}|_{4,}|\+{4,}|/{4,}|\|===|--)\s*$")
_SKIP = re.compile(r"^(\[.*\]|//(?!/).*|:[\w-]+!?:.*|\+|(image|include|toc)::.*)\s*$")
# Every step is linear in the line's length (see appliance.knowledge.formats.inline).
_INLINE: list[Step] = [
    Wrapped(r"<<([^>]+)(>>)?", lambda m: _xref(m[1]), 2),    # <<id,text>>, <<Section title>>
    # link:url[text], kbd:[x], https://host[text]: a macro starts a word, its target has
    # no brackets, so an attempt scans no further than the next bracket.
    substitute(r"(?<![^\s\[\]])[^\s\[\]]*\[([^\[\]]+)\]", r"\1"),
    Emphasis(("**", "*", "__", "_", "``", "`", "##", "#"), open_after=r"\S",
             close_before=r"(?<=\S)"),
]


def _xref(inside: str) -> str:
    """The words a cross reference shows: its text after the comma, else its target."""
    target, comma, text = inside.partition(",")
    return text.lstrip() if comma and target and text.strip() else inside


def inline(text: str) -> str:
    """AsciiDoc inline markup removed, leaving the words."""
    return apply(_INLINE, text)


def _cells(line: str) -> str:
    return "| " + " | ".join(inline(c.strip()) for c in line.strip().lstrip("|").split("|"))


def read(text: str) -> Document:
    """Parse an AsciiDoc manual."""
    doc = DocumentBuilder()
    para: list[str] = []
    block: str | None = None      # the delimiter of the block we are in
    in_header = False

    def flush() -> None:
        doc.paragraph(join_lines(para))
        para.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if block is not None:
            if stripped == block:
                if block != "////":
                    doc.paragraph("\n".join(para) if block in ("----", "....") else
                                  join_lines(para))
                para.clear()
                block = None
            elif block != "////" and stripped:
                para.append(_cells(line) if block == "|===" else line.rstrip())
            continue
        if in_header:
            in_header = bool(stripped)  # the header ends at the first blank line
            continue
        if _DELIMITER.match(stripped):
            flush()
            block = stripped
            continue
        if (m := _TITLE.fullmatch(line)) and not para:
            level = len(m.group(1)) - 1
            doc.heading(level, inline(m.group(2).rstrip()))
            in_header = level == 0  # author, revision and attribute lines follow the title
            continue
        if not stripped:
            flush()
        elif not _SKIP.match(stripped):
            if stripped.startswith(".") and not stripped.startswith(". ") and not para:
                doc.paragraph(inline(stripped[1:]))   # a block title
            else:
                para.append(inline(line))
    flush()
    return doc.build()

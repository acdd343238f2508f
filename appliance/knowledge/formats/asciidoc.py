"""AsciiDoc: ``=`` document title and header, ``==`` to ``======`` section titles, blocks."""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines

_TITLE = re.compile(r"^(={1,6})\s+(\S.*?)\s*$")
_DELIMITER = re.compile(r"^(-{4,}|\.{4,}|={4,}|\*{4,}|_{4,}|\+{4,}|/{4,}|\|===|--)\s*$")
_SKIP = re.compile(r"^(\[.*\]|//(?!/).*|:[\w-]+!?:.*|\+|(image|include|toc)::.*)\s*$")
_INLINE = [
    (re.compile(r"<<[^,>]+,\s*([^>]+)>>"), r"\1"),            # <<id,text>>
    (re.compile(r"<<([^>]+)>>"), r"\1"),                      # <<Section title>>
    (re.compile(r"(?:link:)?(?:https?://)?\S*\[([^\]]+)\]"), r"\1"),  # link:url[text], kbd:[x]
    (re.compile(r"(\*{1,2}|_{1,2}|`{1,2}|#{1,2})(?=\S)(.+?)(?<=\S)\1"), r"\2"),
]


def inline(text: str) -> str:
    """AsciiDoc inline markup removed, leaving the words."""
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


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
        if (m := _TITLE.match(line)) and not para:
            level = len(m.group(1)) - 1
            doc.heading(level, inline(m.group(2)))
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

"""Plain text: paragraphs between blank lines, and the headings that manuals typed by hand use.

A heading is a short line standing alone (blank lines around it) without final punctuation
that is numbered (``4.2 Replacing the battery``, level = how many numbers), written in
capitals (level 1) or underlined with ``=`` (level 1) or ``-``/``~`` (level 2). The first
line of the file is the document's title when it is short and has no final punctuation.
"""

from __future__ import annotations

import re

from appliance.knowledge.document import Document, DocumentBuilder, join_lines

_NUMBERED = re.compile(r"^((?:\d+\.)*\d+)\.?\s+\S")
_UNDERLINE = re.compile(r"^(=+|-+|~+)\s*$")
_MAX_HEADING_WORDS = 12


def _heading_like(line: str) -> bool:
    words = line.split()
    return 0 < len(words) <= _MAX_HEADING_WORDS and not line.rstrip().endswith(
        (".", ",", ";", ":", "!", "?"))


def _level(line: str) -> int | None:
    """The heading level of a line standing alone, or None if it is not a heading."""
    stripped = line.strip()
    if not _heading_like(stripped):
        return None
    if m := _NUMBERED.match(stripped):
        return m.group(1).count(".") + 1
    letters = [c for c in stripped if c.isalpha()]
    if len(letters) >= 3 and all(c.isupper() for c in letters):
        return 1
    return None


def read(text: str) -> Document:
    """Parse a plain-text manual."""
    doc = DocumentBuilder()
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if start < len(lines) and _heading_like(lines[start].strip()):
        doc.heading(0, lines[start])
        start += 1
    para: list[str] = []

    def flush() -> None:
        doc.paragraph(join_lines(para))
        para.clear()

    i = start
    while i < len(lines):
        line = lines[i]
        before = lines[i - 1] if i > 0 else ""
        after = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and not para and not before.strip():
            if (m := _UNDERLINE.match(after)) and _heading_like(line.strip()):
                doc.heading(1 if m.group(1)[0] == "=" else 2, line)
                i += 2
                continue
            if not after.strip() and (level := _level(line)) is not None:
                doc.heading(level, line)
                i += 1
                continue
        if line.strip():
            para.append(line)
        else:
            flush()
        i += 1
    flush()
    return doc.build()

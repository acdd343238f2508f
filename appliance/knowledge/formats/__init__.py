"""The format readers: each turns one kind of file into a :class:`Document`."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

from appliance.knowledge.document import Document
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.formats import asciidoc, html, markdown, pdf, rst, text
from appliance.knowledge.formats.pdf import ProgressFn

TEXT_READERS: dict[str, Callable[[str], Document]] = {
    "markdown": markdown.read, "asciidoc": asciidoc.read, "rst": rst.read,
    "text": text.read, "html": html.read,
}
FORMATS = {
    ".md": "markdown", ".markdown": "markdown", ".adoc": "asciidoc", ".asciidoc": "asciidoc",
    ".asc": "asciidoc", ".rst": "rst", ".rest": "rst", ".txt": "text", ".text": "text",
    ".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf",
}
"""File name suffix (lower case) to format."""


def format_of(path: Path) -> str:
    """The format a file's suffix names; raises for a suffix no reader handles."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        known = " ".join(sorted(FORMATS))
        what = f"'{path.suffix}'" if path.suffix else "no extension"
        raise KnowledgeError(f"unknown format ({what}); known: {known}") from None


def decode(data: bytes) -> str:
    """The text of a text file: UTF-8 (or UTF-16 with a BOM), else Windows-1252.

    Raises for a file that is evidently binary (NUL bytes or many control characters).
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise KnowledgeError("binary data, not text") from None
    sample = data[:65536]
    controls = sum(1 for b in sample if (b < 32 and b not in b"\t\n\r\f\v") or b == 127)
    if b"\0" in sample or controls > 0.05 * len(sample):
        raise KnowledgeError("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read(fmt: str, data: bytes, progress: ProgressFn | None = None) -> Document:
    """Parse ``data`` (the bytes of a file) as ``fmt``."""
    if fmt == "pdf":
        return pdf.read(data, progress=progress)
    return TEXT_READERS[fmt](decode(data))

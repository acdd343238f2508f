"""PDF: text per page through pypdf in a child process, sections from the outline (bookmarks).

Without an outline, numbered heading lines (``4.2 Mechanical seal``) give the sections.
Paragraph breaks are not marked in a PDF's text: a line ending a sentence that is clearly
shorter than the page's full lines ends a paragraph.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from appliance.knowledge.document import Document, DocumentBuilder, join_lines
from appliance.knowledge.errors import KnowledgeError

MAX_PAGES = 3000
"""A PDF with more pages is refused (split it)."""
PAGE_TIMEOUT_S = 30.0
"""Longest wait for one page's text before the extraction is abandoned."""

ProgressFn = Callable[[int, int], None]

_NUMBERED = re.compile(r"^((?:\d+\.)*\d+)\.?\s+[A-Z]")
_SENTENCE_END = (".", "!", "?", ":")


def _messages(data: bytes, max_pages: int, timeout_s: float) -> Iterator[dict[str, Any]]:
    """The worker's JSON lines as they come; raises on a timeout or a crash.

    The worker reads the PDF's bytes from its stdin: the file was opened once, by the
    caller, through :func:`appliance.files.open_regular`, and is never opened by name again.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.knowledge.formats.pdf_worker", str(max_pages)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer, page = bytearray(), 0
    try:
        try:
            with proc.stdin:
                proc.stdin.write(data)
        except BrokenPipeError:
            pass  # it stopped before reading it all: its exit status tells
        while True:
            if not selector.select(timeout_s):
                raise KnowledgeError(f"page {page + 1}: no text after {timeout_s:g} s; the "
                                     "PDF may be malformed")
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buffer += chunk
            if b"\n" not in chunk:
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = json.loads(line)
                page = message.get("page", page)
                yield message
        if proc.wait() != 0:
            raise KnowledgeError(f"the PDF reader stopped (exit {proc.returncode}) at page "
                                 f"{page + 1}; the PDF may be malformed")
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _key(text: str) -> str:
    return re.sub(r"\W+", "", text).lower()


def _paragraphs(lines: list[str]) -> list[str]:
    """Lines of a page run split into paragraphs where a short line ends a sentence."""
    width = max((len(line) for line in lines), default=0)
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        paragraphs[-1].append(line)
        if line.rstrip().endswith(_SENTENCE_END) and len(line) < 0.85 * width:
            paragraphs.append([])
    return [text for p in paragraphs if (text := join_lines(p))]


def _numbered_heading(line: str) -> int | None:
    """The level of a numbered heading line such as ``4.2 Mechanical seal``, else None."""
    m = _NUMBERED.match(line)
    if m and len(line.split()) <= 10 and not line.endswith((".", ",", ";", ":")):
        return m.group(1).count(".") + 1
    return None


def read(data: bytes, *, max_pages: int = MAX_PAGES, page_timeout_s: float = PAGE_TIMEOUT_S,
         progress: ProgressFn | None = None) -> Document:
    """Parse a PDF manual (its bytes); raises :class:`KnowledgeError` with the reason it cannot."""
    doc = DocumentBuilder()
    outline: list[list[Any]] = []
    total = 0
    for message in _messages(data, max_pages, page_timeout_s):
        if "error" in message:
            raise KnowledgeError(message["error"])
        if "pages" in message:
            total, outline = message["pages"], message["outline"]
            doc.pages, doc.named = total, message["title"]
            continue
        number = message["page"]
        doc.page(number)
        pending = [(level, title) for level, title, page in outline if page == number]
        run: list[str] = []
        for raw in message["text"].splitlines():
            line = raw.strip()
            headings: list[tuple[int, str]] = []
            keys = [_key(title) for _level, title in pending]
            if _key(line) and _key(line) in keys:
                found = keys.index(_key(line)) + 1   # bookmarks before it have no text here
                headings, pending = pending[:found], pending[found:]
            elif not outline and (level := _numbered_heading(line)) is not None:
                headings = [(level, line)]
            if not headings:
                run.append(line)
                continue
            for paragraph in _paragraphs(run):
                doc.paragraph(paragraph)
            run = []
            for heading in headings:
                doc.heading(*heading)
        for paragraph in _paragraphs(run):
            doc.paragraph(paragraph)
        for level, title in pending:   # bookmarks whose title is no line of the page
            doc.heading(level, title)
        if progress is not None:
            progress(number, total)
    return doc.build()

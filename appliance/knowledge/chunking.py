"""Cut a document into passages along its own structure: sections, then paragraphs.

A chunk never crosses a section or a page. A section that fits in :data:`MAX_TOKENS` is one
chunk, however short; a longer one is cut between paragraphs into even chunks of about
:data:`MIN_TOKENS` to :data:`MAX_TOKENS`, and a paragraph too long by itself between
sentences. Tokens are estimated as words x 1.3: over the test manuals SmolLM2's tokenizer
gives 0.96 real tokens per estimated one (``bench knowledge`` prints the ratio for the
configured model).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

from appliance.knowledge.document import SEPARATOR, Document

MIN_TOKENS = 150
MAX_TOKENS = 300
TOKENS_PER_WORD = 1.3

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def approx_tokens(text: str) -> int:
    """Estimated model tokens in ``text`` (words x 1.3, rounded up)."""
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


def passage_hash(doc: str, section: str, page: int | None, text: str) -> str:
    """A stable hash of a passage's content and its place (hex SHA-256)."""
    key = json.dumps([doc, section, page, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Excerpt:
    """One indexed passage of a document."""

    section: str        # the section path, "Maintenance > Filters" ("" before any heading)
    page: int | None
    text: str
    tokens: int


def _pieces(paragraph: str) -> list[str]:
    """A paragraph, or its sentences (or word runs) when it is over :data:`MAX_TOKENS`."""
    if approx_tokens(paragraph) <= MAX_TOKENS:
        return [paragraph]
    pieces: list[str] = []
    for sentence in _SENTENCE.split(paragraph):
        words = sentence.split()
        step = int(MAX_TOKENS / TOKENS_PER_WORD)
        pieces.extend(" ".join(words[i:i + step]) for i in range(0, len(words), step))
    return pieces


def _pack(pieces: list[tuple[str, bool]]) -> list[str]:
    """``(piece, starts a paragraph)`` joined into chunks of even size, none over the max."""
    sizes = [approx_tokens(p) for p, _first in pieces]
    total = sum(sizes)
    target = total / math.ceil(total / MAX_TOKENS) if total else 0
    chunks: list[str] = []
    current, size = "", 0
    for (piece, first), n in zip(pieces, sizes, strict=True):
        if current and (size + n > MAX_TOKENS or size >= target):
            chunks.append(current)
            current, size = "", 0
        joiner = "\n\n" if first else " "
        current = f"{current}{joiner}{piece}" if current else piece
        size += n
    return [*chunks, current] if current else chunks


def chunk(document: Document) -> list[Excerpt]:
    """The document's chunks in reading order."""
    chunks: list[Excerpt] = []
    for section in document.sections:
        pieces = [(piece, i == 0) for paragraph in section.paragraphs
                  for i, piece in enumerate(_pieces(paragraph))]
        title = SEPARATOR.join(section.path)
        for text in _pack(pieces):
            chunks.append(Excerpt(title, section.page, text, approx_tokens(text)))
    return chunks

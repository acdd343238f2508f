"""Adding, replacing and removing manuals in the index, each change in one transaction."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from appliance.files import open_regular
from appliance.knowledge import formats
from appliance.knowledge.chunking import Excerpt, chunk, passage_hash
from appliance.knowledge.document import SEPARATOR, Document
from appliance.knowledge.embedding import MODEL_ID, Embedder
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.store import connect, transaction

ProgressFn = Callable[[str, int, int], None]
"""Called with ``(stage, done, total)``: stage ``pages`` while a PDF is read, ``passages``
while the chunks are embedded."""
EMBED_BATCH = 32

# What a reader may raise on a file it cannot make sense of (html.parser, re, codecs).
_PARSE_ERRORS = (ValueError, IndexError, AssertionError, RecursionError, UnicodeError)


@dataclass(frozen=True)
class Added:
    """What ``add`` did with one file."""

    name: str
    status: Literal["added", "replaced", "unchanged"]
    chunks: int
    pages: int | None = None

    def line(self) -> str:
        """What ``knowledge add`` (and the console's Manuals page) says of it."""
        if self.status == "unchanged":
            return f"{self.name}: unchanged ({self.chunks} passages)"
        pages = f" from {self.pages} pages" if self.pages else ""
        return f"{self.name}: {self.status}, {self.chunks} passages{pages}"


def removed_line(name: str, passages: int) -> str:
    """What ``knowledge remove`` (and the console's Manuals page) says of a removed manual."""
    return f"{name}: removed ({passages} passages)"


@dataclass(frozen=True)
class DocumentInfo:
    """One indexed manual, as ``knowledge list`` shows it."""

    name: str
    format: str
    title: str | None
    chunks: int
    pages: int | None
    bytes: int
    added: str
    source: str


def _read_file(path: Path, max_bytes: int) -> tuple[str, bytes]:
    """``(format, data)`` of a file fit to index; raises with the reason it is not.

    The file is opened once, through :func:`open_regular`: a FIFO or a device named like a
    manual (or a link to one) is refused instead of waited on or read forever, and no more
    than ``max_bytes`` are read even from a file that grows meanwhile.
    """
    try:
        with open_regular(path) as fh:
            fmt = formats.format_of(path)
            size = os.fstat(fh.fileno()).st_size
            if size <= max_bytes:
                data = fh.read(max_bytes + 1)
                size = len(data)
    except IsADirectoryError:
        raise KnowledgeError("is a directory; name the files in it") from None
    except FileNotFoundError:
        raise KnowledgeError("no such file") from None
    except OSError as exc:
        raise KnowledgeError(f"cannot read it ({exc.strerror or exc})") from None
    if size > max_bytes:
        raise KnowledgeError(f"{size / 1e6:.3g} MB is over knowledge.max_file_mb "
                             f"({max_bytes / 1e6:.3g} MB)")
    if not data.strip():
        raise KnowledgeError("empty file")
    return fmt, data


def _rows(name: str, document: Document, chunks: list[Excerpt]) -> list[list[object]]:
    """``[ord, section, page, title, body, tokens, hash]`` for each chunk."""
    rows: list[list[object]] = []
    for number, c in enumerate(chunks):
        section = c.section or document.title or ""
        title = SEPARATOR.join(t for t in (document.title, c.section) if t)
        rows.append([number, section, c.page, title, c.text, c.tokens,
                     passage_hash(name, section, c.page, c.text)])
    return rows


def embedding_text(title: str, body: str) -> str:
    """What the embedding model reads of a chunk: where it is, then what it says."""
    return f"{title}. {body}" if title else body


def reembed(path: Path, embedder: Embedder | None = None,
            progress: ProgressFn | None = None) -> int:
    """Compute the vector of every passage of the index at ``path`` again; how many.

    For an index made with another embedding model (an older version of appliance): its
    vectors are never compared with this model's, so it cannot be searched until then.
    Stage ``passages`` of ``progress`` counts them.
    """
    conn = connect(path, create=False, writable=True, any_vectors=True)
    try:
        rows = conn.execute("SELECT id, title, body FROM chunks ORDER BY id").fetchall()
        vectors = _vectors(embedder or Embedder.beside(path),
                           [embedding_text(title, body) for _, title, body in rows], progress)
        with transaction(conn):
            conn.executemany("UPDATE chunks SET vector = ? WHERE id = ?",
                             [(v, row[0]) for v, row in zip(vectors, rows, strict=True)])
            conn.execute("UPDATE meta SET value = ? WHERE key = 'embedder'", (MODEL_ID,))
    finally:
        conn.close()
    return len(rows)


def _vectors(embedder: Embedder, texts: list[str], progress: ProgressFn | None,
             ) -> list[bytes]:
    """Each text's vector as float16 bytes; stage ``passages`` of ``progress`` counts them."""
    vectors: list[bytes] = []
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start:start + EMBED_BATCH]
        vectors += [vector.astype("<f2").tobytes() for vector in embedder.embed(batch)]
        if progress is not None:
            progress("passages", start + len(batch), len(texts))
    return vectors


class KnowledgeIndex:
    """The writable index at ``path`` (created on first use)."""

    def __init__(self, path: Path, embedder: Embedder | None = None) -> None:
        self.path = path
        self._conn = connect(path, create=True)
        self._embedder = embedder

    @property
    def embedder(self) -> Embedder:
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            self._embedder = Embedder.beside(self.path)
        return self._embedder

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def add(self, path: Path, *, max_file_mb: float,
            progress: ProgressFn | None = None) -> Added:
        """Index one file under its name; a no-op when that name has the same content.

        A changed file replaces the old chunks in the same transaction, so a search sees
        either the old manual or the new one. Raises :class:`KnowledgeError` naming the file
        and the problem; then nothing of it was written.
        """
        name = path.name
        try:
            fmt, data = _read_file(path, int(max_file_mb * 1e6))
            sha256 = hashlib.sha256(data).hexdigest()
            old = self._conn.execute(
                "SELECT sha256, (SELECT count(*) FROM chunks WHERE doc_id = docs.id), pages"
                " FROM docs WHERE name = ?", (name,)).fetchone()
            if old is not None and old[0] == sha256:
                return Added(name, "unchanged", old[1], old[2])
            def pages(done: int, total: int) -> None:
                if progress is not None:
                    progress("pages", done, total)

            try:
                document = formats.read(fmt, data, pages)
            except _PARSE_ERRORS as exc:
                raise KnowledgeError(f"cannot be read as {fmt} ({type(exc).__name__}: "
                                     f"{exc})") from None
            chunks = chunk(document)
            if not chunks:
                raise KnowledgeError("no text in it" + (
                    " (a scanned PDF needs OCR first)" if fmt == "pdf" else ""))
        except KnowledgeError as exc:
            raise KnowledgeError(f"{path}: {exc}") from None
        rows = _rows(name, document, chunks)
        self._embed(rows, progress)
        replaced = self._replace(name, path, fmt, sha256, len(data), document, rows)
        return Added(name, "replaced" if replaced else "added", len(chunks), document.pages)

    def _embed(self, rows: list[list[object]], progress: ProgressFn | None) -> None:
        """Append each row's vector (float16 bytes)."""
        texts = [embedding_text(str(r[3]), str(r[4])) for r in rows]
        for row, vector in zip(rows, _vectors(self.embedder, texts, progress), strict=True):
            row.append(vector)

    def _replace(self, name: str, path: Path, fmt: str, sha256: str, size: int,
                 document: Document, rows: list[list[object]]) -> bool:
        """Write the document in one transaction; True if it replaced one of that name."""
        with transaction(self._conn) as conn:
            # Looked up again here: another process may have changed it while we read.
            conn.execute("DELETE FROM chunks WHERE doc_id IN (SELECT id FROM docs"
                         " WHERE name = ?)", (name,))
            replaced = conn.execute("DELETE FROM docs WHERE name = ?", (name,)).rowcount > 0
            doc_id = conn.execute(
                "INSERT INTO docs(name, source, format, title, sha256, bytes, pages, added)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, str(path.resolve()), fmt, document.title, sha256, size, document.pages,
                 datetime.now(UTC).isoformat(timespec="seconds"))).lastrowid
            conn.executemany(
                "INSERT INTO chunks(doc_id, ord, section, page, title, body, tokens, hash,"
                " vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(doc_id, *row) for row in rows])
        return replaced

    def remove(self, name: str) -> int:
        """Remove the manual called ``name``; returns how many chunks went with it."""
        with transaction(self._conn) as conn:
            row = conn.execute("SELECT id FROM docs WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KnowledgeError(f"{name}: no manual of that name is indexed; see: "
                                     "appliance knowledge list")
            removed = conn.execute("DELETE FROM chunks WHERE doc_id = ?", (row[0],)).rowcount
            conn.execute("DELETE FROM docs WHERE id = ?", (row[0],))
        return removed

    def documents(self) -> list[DocumentInfo]:
        """The indexed manuals, by name."""
        rows = self._conn.execute(
            "SELECT name, format, title, (SELECT count(*) FROM chunks WHERE doc_id = docs.id),"
            " pages, bytes, added, source FROM docs ORDER BY name").fetchall()
        return [DocumentInfo(*row) for row in rows]

"""Finding the passages that answer a question: embeddings first, BM25 for the exact words.

A passage's score is the cosine similarity of the question's and the passage's embeddings,
plus :data:`BM25_WEIGHT` times its BM25 score relative to the best BM25 match of the
question. Over the test manuals, the passage that answers a paraphrased question scores
at least 0.279 (median 0.53); the best passage for 17 of 24 unrelated questions scores under
0.27 (``knowledge.min_score``), while one that shares the manuals' subject or words can
score like an answered one (tests/knowledge_offtopic.yaml, ``bench knowledge``).
The embedding carries paraphrases ("the screen shows nothing" finds "The display is
blank"); BM25 carries the exact tokens an embedding blurs: error codes, part numbers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.knowledge.embedding import Embedder
from appliance.knowledge.query import match_expression, terms
from appliance.knowledge.store import connect

TITLE_WEIGHT = 4.0
"""BM25 weight of a chunk's document title and section path, against 1.0 for its text."""
BM25_WEIGHT = 0.1
"""Share of the (normalized) BM25 score in a passage's score."""
BM25_CANDIDATES = 50
"""How many of the best BM25 matches get their BM25 share; the others get none."""


@dataclass(frozen=True)
class Passage:
    """A chunk of a manual that may answer a question.

    ``hash`` is a hex SHA-256 of the document name, section, page and text: the same passage
    has the same hash across re-indexing, and any change to what a prompt would show of it
    gives a new one, so it can key a cache of the model's state after reading it.
    ``score`` is the relevance to the question searched for (see the module; higher is
    better; 0 for passages that were listed, not searched). ``tokens`` is an estimate.
    """

    doc: str
    section: str
    page: int | None
    text: str
    score: float
    hash: str
    tokens: int

    @property
    def source(self) -> dict[str, Any]:
        """Where it comes from, as an answer cites it: ``{"doc", "section", "page"?}``."""
        cite: dict[str, Any] = {"doc": self.doc, "section": self.section}
        if self.page is not None:
            cite["page"] = self.page
        return cite

    def to_json(self) -> dict[str, Any]:
        """``{"doc", "section", "page"?, "score", "text"}`` as ``knowledge search --json``."""
        return {**self.source, "score": round(self.score, 4), "text": self.text}


_PASSAGE = ("SELECT c.id, d.name, c.section, c.page, c.body, c.hash, c.tokens"
            " FROM chunks c JOIN docs d ON d.id = c.doc_id")
_BM25 = (f"SELECT rowid, -bm25(chunks_fts, {TITLE_WEIGHT}, 1.0) FROM chunks_fts"
         f" WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts, {TITLE_WEIGHT}, 1.0) LIMIT ?")


class Retriever:
    """Searches the index at ``path``, opened once; safe to share between threads.

    The chunk vectors live in memory (1.5 KB a chunk); manuals added or removed while it is
    open are seen by the next search.
    """

    def __init__(self, path: Path, embedder: Embedder | None = None, *,
                 dense_weight: float = 1.0, bm25_weight: float = BM25_WEIGHT) -> None:
        self._conn = connect(path, create=False)
        # Either weight at 0 turns that half off (``bench knowledge`` compares the halves).
        self.dense_weight, self.bm25_weight = dense_weight, bm25_weight
        self._embedder = (embedder or Embedder.beside(path)) if dense_weight else None
        self._lock = threading.Lock()
        self._version: int | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._row: dict[int, int] = {}
        self._vectors = np.zeros((0, 0), dtype=np.float32)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def _refresh(self) -> None:
        """Reload the vectors if the index changed since they were loaded."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        rows = self._conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        self._ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._row = {int(chunk_id): i for i, chunk_id in enumerate(self._ids)}
        blob = b"".join(r[1] for r in rows)
        self._vectors = np.frombuffer(blob, dtype="<f2").reshape(len(rows), -1).astype(
            np.float32) if rows else np.zeros((0, 0), dtype=np.float32)
        self._version = version

    def _scores(self, query: np.ndarray | None, expression: str) -> np.ndarray:
        """Each chunk's score (by row); -inf for a chunk neither half scored."""
        if query is not None:
            # einsum, not BLAS: OpenBLAS's threads spin after a product and starve the
            # embedding model's threads on the next question (p50 14 ms against 5 ms here).
            scores = self.dense_weight * np.einsum("ij,j->i", self._vectors, query)
        else:
            scores = np.full(len(self._ids), -np.inf, dtype=np.float32)
        if expression:
            matches = self._conn.execute(_BM25, (expression, BM25_CANDIDATES)).fetchall()
            for chunk_id, bm25 in matches:
                row = self._row[chunk_id]
                dense = scores[row] if query is not None else 0.0
                scores[row] = dense + self.bm25_weight * bm25 / matches[0][1]
        return scores

    def search(self, question: str, k: int = 3, min_score: float | None = None,
               ) -> list[Passage]:
        """The ``k`` passages most relevant to ``question``, best first.

        Passages scoring below ``min_score`` are left out; a blank question gets none.
        """
        if not question.strip() or k <= 0:
            return []
        query = self._embedder.embed_one(question) if self._embedder is not None else None
        expression = match_expression(terms(question)) if self.bm25_weight else ""
        with self._lock:
            self._refresh()
            if not len(self._ids):
                return []
            scores = self._scores(query, expression)
            k = min(k, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            chosen = {int(self._ids[i]): float(scores[i]) for i in top if np.isfinite(scores[i])
                      and (min_score is None or scores[i] >= min_score)}
            if not chosen:
                return []
            marks = ",".join("?" * len(chosen))
            rows = self._conn.execute(f"{_PASSAGE} WHERE c.id IN ({marks})",
                                      tuple(chosen)).fetchall()
        by_id = {row[0]: row for row in rows}
        return [Passage(*by_id[i][1:5], chosen[i], *by_id[i][5:]) for i in chosen]

    def passages(self) -> Iterator[Passage]:
        """Every indexed passage, by document and in reading order (score 0)."""
        with self._lock:
            rows = self._conn.execute(f"{_PASSAGE} ORDER BY d.name, c.ord").fetchall()
        for row in rows:
            yield Passage(*row[1:5], 0.0, *row[5:])

"""The SQLite file that holds the knowledge index: its schema and how it is opened.

``chunks`` holds the passages with their embedding vectors (float16); ``chunks_fts`` is an
FTS5 index over them with external content (the text is stored once), kept in step by
triggers. Its ``title`` column is the document title and section path of each chunk,
weighted above the body when ranking.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from appliance.knowledge.embedding import MODEL_ID
from appliance.knowledge.errors import KnowledgeError

FILENAME = "knowledge.sqlite3"
SCHEMA_VERSION = "1"
TOKENIZER = "porter unicode61 remove_diacritics 2"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    format TEXT NOT NULL,
    title TEXT,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    pages INTEGER,
    added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES docs(id),
    ord INTEGER NOT NULL,
    section TEXT NOT NULL,
    page INTEGER,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    hash TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, ord);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    title, body, content='chunks', content_rowid='id', tokenize='{TOKENIZER}');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, body)
    VALUES ('delete', old.id, old.title, old.body);
END;
"""


def index_path(data_dir: Path) -> Path:
    """Where the index of a device with this ``data_dir`` lives."""
    return data_dir / FILENAME


def connect(path: Path, *, create: bool, writable: bool = False,
            any_vectors: bool = False) -> sqlite3.Connection:
    """Open the index (creating it when ``create``); raises :class:`KnowledgeError`.

    It is opened read-only unless ``create`` or ``writable``. An index whose vectors
    another embedding model made is refused unless ``any_vectors`` (to compute them
    again: :func:`appliance.knowledge.index.reembed`).
    """
    if not create and not path.is_file():
        raise KnowledgeError(f"{path}: no knowledge index yet; add manuals with: "
                             "appliance knowledge add PATH...")
    try:
        if create or writable:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('embedder', ?)",
                         (SCHEMA_VERSION, MODEL_ID))
        else:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError as exc:
        if "fts5" in str(exc):
            raise KnowledgeError(f"{path}: this Python's SQLite lacks FTS5, which the "
                                 "knowledge index needs") from None
        raise KnowledgeError(f"{path}: cannot open the knowledge index ({exc})") from None
    except sqlite3.DatabaseError as exc:
        raise KnowledgeError(f"{path}: not a knowledge index ({exc})") from None
    schema, vectors = meta.get("schema"), meta.get("embedder")
    if schema != SCHEMA_VERSION:
        conn.close()
        raise KnowledgeError(f"{path}: made by another version of appliance (schema "
                             f"{schema}; this one reads schema {SCHEMA_VERSION}); delete it "
                             "and add the manuals again")
    if vectors != MODEL_ID and not any_vectors:
        conn.close()
        raise KnowledgeError(f"{path}: its vectors are of {vectors}, this version of appliance "
                             f"searches with {MODEL_ID}; compute them again with: appliance "
                             "knowledge reembed")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed, or rolled back if anything raises inside.

    ``BEGIN IMMEDIATE`` takes the write lock at once, so that what is read inside the
    transaction cannot change under it.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

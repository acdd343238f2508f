"""The activity log: what the appliance did lately, kept in the journal for the console.

The journal's other tables hold only what is still to do (a request is
deleted when it is answered, an answer when the broker has it), so what was
done is written here, one row per event, in the ``activity`` table of the
same file:

- ``answer``: a question and its answer (the request's entrance as source);
- ``error``: a question that could not be answered, and why;
- ``rule``: a sensor rule that fired, and its alert;
- ``action``: an action's record (verdict, reason, needs);
- ``console``: a change made from the console, and who made it.

The table is bounded (:data:`MAX_ROWS`: each write drops what is older) and
its texts are cut (:data:`TITLE_CHARS`, :data:`TEXT_CHARS`). Rows are written
on the event loop with the journal's own connection, like its other small
writes; :func:`read` opens a read-only connection of its own, so the console
reads on a thread while the loop goes on writing (WAL allows both).

    write(db, Entry("console", "console", "ask", "What is 2+2?", fields={"who": "admin"}))
    read(path, ActivityQuery(kind="console", limit=10))   # newest first
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from appliance.protocol.messages import ENTRANCES

Kind = Literal["answer", "error", "rule", "action", "console"]
KINDS: tuple[str, ...] = get_args(Kind)
SOURCES = ENTRANCES
"""The sources a row may have: a request's entrance, or the console."""

MAX_ROWS = 2000
PAGE = 100
TITLE_CHARS = 200
TEXT_CHARS = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS activity (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    ref TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    fields TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS activity_by_kind ON activity (kind, id);
CREATE INDEX IF NOT EXISTS activity_by_source ON activity (source, id);
"""
_COLUMNS = "id, at, kind, source, ref, title, text, fields"


@dataclass(frozen=True)
class Entry:
    """One row: what happened (``kind``), where it came from, and what to show of it.

    ``ref`` is the request's or the action's id; ``title`` the question, the
    rule, the action or the console change; ``text`` the answer, the reason or
    the detail; ``fields`` the rest (verdict, needs, tokens, who...). ``id`` and
    ``at`` (wall clock, seconds) are set when it is written.
    """

    kind: Kind
    source: str
    title: str
    text: str = ""
    ref: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    id: int = 0
    at: float = 0.0


@dataclass(frozen=True)
class ActivityQuery:
    """Which rows: of one source and/or kind, older than row ``before``, at most ``limit``."""

    source: str | None = None
    kind: str | None = None
    before: int | None = None
    limit: int = PAGE


def write(db: sqlite3.Connection, entry: Entry, keep: int = MAX_ROWS,
          clock: float | None = None) -> None:
    """Add ``entry`` and drop the rows older than the newest ``keep``, in one transaction."""
    with db:
        db.execute("BEGIN")
        cur = db.execute(
            "INSERT INTO activity (at, kind, source, ref, title, text, fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time() if clock is None else clock, entry.kind, entry.source,
             entry.ref[:TITLE_CHARS], entry.title[:TITLE_CHARS], entry.text[:TEXT_CHARS],
             json.dumps(entry.fields, ensure_ascii=False, default=str)))
        newest = int(cur.lastrowid or 0)
        if newest > keep:
            db.execute("DELETE FROM activity WHERE id <= ?", (newest - keep,))


def read(path: Path, query: ActivityQuery) -> list[Entry]:
    """The rows ``query`` asks for, newest first (blocking: call it on a thread)."""
    where, args = [], []
    for column, value in (("source", query.source), ("kind", query.kind)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.before is not None:
        where.append("id < ?")
        args.append(query.before)
    sql = (f"SELECT {_COLUMNS} FROM activity"
           f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT ?")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute(sql, (*args, max(1, min(query.limit, PAGE)))).fetchall()
    finally:
        db.close()
    return [_entry(row) for row in rows]


def _entry(row: tuple[Any, ...]) -> Entry:
    row_id, at, kind, source, ref, title, text, fields = row
    try:
        extra = json.loads(fields)
    except ValueError:
        extra = {}
    return Entry(kind, source, title, text, ref, extra if isinstance(extra, dict) else {},
                 int(row_id), float(at))

"""The SQLite journal: requests not yet answered, and answers not yet acknowledged.

A request is written here before its MQTT message is acknowledged; its answer
replaces it in the same transaction, in the outbox, and leaves the outbox only
when the broker has acknowledged it (PUBACK). A crash at any point therefore
loses nothing, and a journaled request is answered exactly once. WAL mode with
``synchronous=NORMAL`` survives a killed process and keeps SD-card writes small.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from pathlib import Path

from appliance.service.requests import Outgoing, Request

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    max_tokens INTEGER,
    reply_topic TEXT,
    correlation BLOB,
    rule TEXT,
    client TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    correlation BLOB
);
"""

_COLUMNS = ("id", "source", "text", "max_tokens", "reply_topic", "correlation", "rule",
            "client", "attempts")


class Journal:
    """Requests and the outbox in one SQLite file (``<data_dir>/journal.sqlite3``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add(self, request: Request) -> bool:
        """Record ``request``; ``False`` if one with its id is already journaled."""
        row = asdict(request)
        cur = self._db.execute(
            f"INSERT OR IGNORE INTO requests ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))})", [row[c] for c in _COLUMNS])
        return cur.rowcount == 1

    def update_text(self, request_id: str, text: str) -> None:
        """Replace a queued request's text (a coalesced sensor event: the latest wins)."""
        self._db.execute("UPDATE requests SET text = ? WHERE id = ?", (text, request_id))

    def count_attempt(self, request_id: str) -> None:
        """Note that a generation of this request has started."""
        self._db.execute("UPDATE requests SET attempts = attempts + 1 WHERE id = ?",
                         (request_id,))

    def pending(self) -> list[Request]:
        """Every unanswered request, oldest first."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests ORDER BY seq")
        return [Request(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def answer(self, request_id: str | None, messages: list[Outgoing]) -> list[int]:
        """Atomically drop the request and queue its answer ``messages``; returns outbox keys."""
        keys = []
        with self._db:  # commits, or rolls back on error, the transaction begun here
            self._db.execute("BEGIN")
            if request_id is not None:
                self._db.execute("DELETE FROM requests WHERE id = ?", (request_id,))
            for m in messages:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, correlation) "
                    "VALUES (?, ?, ?, ?, ?)", (m.topic, m.payload, m.qos, int(m.retain),
                                               m.correlation))
                keys.append(int(cur.lastrowid or 0))
        return keys

    def outbox(self) -> list[tuple[int, Outgoing]]:
        """Every answer not yet acknowledged by the broker, oldest first."""
        rows = self._db.execute(
            "SELECT seq, topic, payload, qos, retain, correlation FROM outbox ORDER BY seq")
        return [(seq, Outgoing(topic, bytes(payload), qos, bool(retain),
                               None if corr is None else bytes(corr)))
                for seq, topic, payload, qos, retain, corr in rows]

    def delivered(self, key: int) -> None:
        """The broker acknowledged outbox entry ``key``."""
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (key,))

    def close(self) -> None:
        """Close the database."""
        self._db.close()

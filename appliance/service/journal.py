"""The SQLite journal: requests not yet answered, and answers not yet acknowledged.

A request is written here before its MQTT message is acknowledged; its answer
replaces it in the same transaction, in the outbox, and leaves the outbox only
when the broker has acknowledged it (PUBACK). A crash at any point therefore
loses nothing, and a journaled request is answered exactly once.

WAL mode. The write that comes before an acknowledgement (:meth:`Journal.add`)
commits with ``synchronous=FULL``: it is on the card before it returns, so a
power cut (the common crash on a Pi) loses no acknowledged question. The
other writes use ``NORMAL`` (one fsync fewer each): if a power cut takes one
of them back, the question is still journaled and is answered again after
boot, which QoS 1's at-least-once already allows. An action's last run is
written with ``FULL`` too: its cooldown must hold after a power cut. A write
that cannot commit (disk full, a card remounted read-only) raises
:class:`JournalError`, and the caller does not acknowledge. A journal that
cannot be read is moved aside with a timestamp and a fresh one is started
(:attr:`Journal.recovered` says so).

The same file keeps the sensor readings and when each action last ran (see
:mod:`appliance.actions.world`), and the recent activity that the console
shows (:mod:`appliance.service.activity_log`: answers, errors, rule firings,
action records, changes made from the console; bounded).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.actions.world import Stamp
from appliance.errors import ApplianceError
from appliance.llm.types import Turn
from appliance.logs import get_logger
from appliance.protocol.messages import Outgoing, Request
from appliance.service import activity_log
from appliance.service.activity_log import ActivityQuery, Entry
from appliance.service.conversations import Conversation

log = get_logger("journal")

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
    attempts INTEGER NOT NULL DEFAULT 0,
    tier TEXT NOT NULL DEFAULT 'auto',
    conversation TEXT
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    turns TEXT NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS world (
    name TEXT PRIMARY KEY,
    fields TEXT NOT NULL,
    at REAL NOT NULL,
    mono REAL NOT NULL DEFAULT 0,
    boot TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL,
    mono REAL NOT NULL,
    boot TEXT NOT NULL
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
            "client", "attempts", "tier", "conversation")
_ADDED_COLUMNS = {
    "requests": {"tier": "TEXT NOT NULL DEFAULT 'auto'", "conversation": "TEXT"},
    # A reading kept by an older release has no boot: it is stale (never from this boot).
    "world": {"mono": "REAL NOT NULL DEFAULT 0", "boot": "TEXT NOT NULL DEFAULT ''"},
}
"""Columns newer than the first release, by table, added to an older journal in place."""

def _turn(role: object, content: object) -> Turn:
    """A kept turn; ``ValueError`` for one that is not a user's or the assistant's text."""
    if role == "user" and isinstance(content, str):
        return Turn("user", content)
    if role == "assistant" and isinstance(content, str):
        return Turn("assistant", content)
    raise ValueError(f"not a conversation turn: {role!r}")


class JournalError(ApplianceError):
    """The journal cannot be written (disk full, read-only) or read."""


def _moved_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            os.replace(part, aside.with_name(aside.name + suffix))
    return aside


class Journal:
    """Requests and the outbox in one SQLite file (``<data_dir>/journal.sqlite3``).

    Raises :class:`JournalError` when the file cannot be opened at all (a
    read-only or missing data_dir).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.recovered: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise JournalError(f"{path}: cannot open the journal: {exc}") from None
            aside = _moved_aside(path)
            self.recovered = (f"the journal {path} was unreadable ({exc}); it was moved to "
                              f"{aside.name} and a new one started")
            log.error("journal_recovered", moved_to=str(aside), error=str(exc))
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as again:
                raise JournalError(f"{path}: cannot open the journal: {again}") from None
        except OSError as exc:
            raise JournalError(f"{path.parent}: cannot create the data_dir: "
                               f"{exc.strerror}") from None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA + activity_log.SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests LIMIT 1").fetchall()
            db.execute("SELECT seq, topic, payload, qos, retain, correlation FROM outbox "
                       "LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot {what}: {exc}") from None

    @contextmanager
    def _durable(self) -> Iterator[None]:
        """Writes inside commit with ``synchronous=FULL``: on the card when they return."""
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def add(self, request: Request) -> bool:
        """Record ``request``; ``False`` if one with its id is already journaled."""
        row = asdict(request)
        with self._writing("journal the request"), self._durable():  # acknowledged right after
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO requests ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})", [row[c] for c in _COLUMNS])
        return cur.rowcount == 1

    def update_text(self, request_id: str, text: str) -> None:
        """Replace a queued request's text (a coalesced sensor event: the latest wins)."""
        with self._writing("update the request"):
            self._db.execute("UPDATE requests SET text = ? WHERE id = ?", (text, request_id))

    def count_attempt(self, request_id: str) -> None:
        """Note that a generation of this request has started."""
        with self._writing("count the attempt"):
            self._db.execute("UPDATE requests SET attempts = attempts + 1 WHERE id = ?",
                             (request_id,))

    def keep_conversation(self, conversation: Conversation) -> None:
        """Store or replace ``conversation`` (its turns as JSON)."""
        turns = json.dumps([[t.role, t.content] for t in conversation.turns], ensure_ascii=False)
        with self._writing("keep the conversation"):
            self._db.execute("INSERT OR REPLACE INTO conversations (id, turns, last_used) "
                             "VALUES (?, ?, ?)", (conversation.id, turns, conversation.last_used))

    def forget_conversation(self, conversation_id: str) -> None:
        """Drop a conversation."""
        with self._writing("forget the conversation"):
            self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def conversations(self) -> list[Conversation]:
        """Every kept conversation (one that does not parse is skipped)."""
        kept = []
        for conversation_id, turns, last_used in self._db.execute(
                "SELECT id, turns, last_used FROM conversations"):
            try:
                kept.append(Conversation(str(conversation_id), tuple(
                    _turn(role, content) for role, content in json.loads(turns)),
                    float(last_used)))
            except (ValueError, TypeError) as exc:
                log.warning("conversation_unreadable", conversation=conversation_id,
                            error=str(exc))
        return kept

    def pending(self) -> list[Request]:
        """Every unanswered request, oldest first."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests ORDER BY seq")
        return [Request(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    def answer(self, request_id: str | None, messages: list[Outgoing]) -> list[int]:
        """Atomically drop the request and queue its answer ``messages``; returns outbox keys."""
        keys: list[int] = []
        with self._writing("store the answer"), self._db:
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
        """The broker acknowledged (or refused for good) outbox entry ``key``."""
        with self._writing("retire the answer"):
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (key,))

    def world(self) -> dict[str, tuple[dict[str, Any], Stamp]]:
        """The sensor readings kept from before (see :mod:`appliance.actions.world`)."""
        rows = self._db.execute("SELECT name, fields, at, mono, boot FROM world")
        kept = {}
        for name, fields, at, mono, boot in rows:
            with contextlib.suppress(ValueError, TypeError):
                kept[name] = (json.loads(fields), Stamp(float(at), float(mono), str(boot)))
        return kept

    def save_world(self, readings: dict[str, tuple[dict[str, Any], Stamp]]) -> None:
        """Keep the latest readings (a lost one costs a stale reading, nothing more)."""
        with self._writing("keep the sensor readings"), self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO world (name, fields, at, mono, boot) "
                "VALUES (?, ?, ?, ?, ?)",
                [(name, json.dumps(fields, ensure_ascii=False), s.at, s.mono, s.boot)
                 for name, (fields, s) in readings.items()])

    def runs(self) -> dict[str, Stamp]:
        """When each action last ran (its cooldown counts from there)."""
        rows = self._db.execute("SELECT name, at, mono, boot FROM runs")
        return {name: Stamp(float(at), float(mono), str(boot)) for name, at, mono, boot in rows}

    def save_run(self, name: str, stamp: Stamp) -> None:
        """Keep that action ``name`` ran at ``stamp``, on the card: its cooldown must hold."""
        with self._writing("keep the action's last run"), self._durable():
            self._db.execute("INSERT OR REPLACE INTO runs (name, at, mono, boot) "
                             "VALUES (?, ?, ?, ?)", (name, stamp.at, stamp.mono, stamp.boot))

    def note(self, entry: Entry) -> None:
        """Add ``entry`` to the activity log (best effort: a lost row is logged, not raised)."""
        try:
            with self._writing("note the activity"):
                activity_log.write(self._db, entry)
        except JournalError as exc:
            log.warning("activity_not_kept", kind=entry.kind, error=str(exc))

    def console_action(self, who: str, action: str, detail: str = "") -> None:
        """Note a change made from the console by ``who`` (``admin@<address>``)."""
        self.note(Entry("console", "console", action, detail, fields={"who": who}))

    def activity(self, query: ActivityQuery) -> list[Entry]:
        """The activity rows ``query`` asks for, newest first (blocking: call it on a thread)."""
        try:
            return activity_log.read(self.path, query)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot read the activity: {exc}") from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` means the file holds no readable journal (rather than, say, no access)."""
    text = str(exc).lower()
    return (not isinstance(exc, sqlite3.OperationalError) or "malformed" in text
            or "not a database" in text or "no such column" in text
            or "disk image" in text)

"""The console's password and sessions.

**The password** is one Argon2id hash in a file (:mod:`appliance.console.password`),
set by ``appliance console password``, by install.sh or cloud-init through it,
or once by the first-run page from loopback. The service re-reads the file when
it changes (checked at most once a second, off the loop), so a password reset
from the shell takes effect without a restart, and ends every session.

A file that exists but holds no valid Argon2id hash (cut, edited, unreadable)
is logged once, in one line, and treated as **no password**: nobody can log in,
only loopback clients are served, and from loopback the first-run page may set a
new one. This is the safest choice: trusting it is impossible, refusing
everyone would lock out the person at the device, and serving the network
without a password is what the lock is for.

**Sessions** live in memory only (a restart logs everyone out): a random id in
the cookie, a CSRF token of their own, expiry ``api.web.session_hours`` after
their last use, at most :data:`MAX_SESSIONS` (the least recently used is
dropped).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from appliance.config.schema_api import WebSettings
from appliance.console import password as pw
from appliance.console.roles import Session
from appliance.console.throttle import LoginThrottle
from appliance.logs import get_logger

log = get_logger("console")

MAX_SESSIONS = 32
RECHECK_S = 1.0
"""How often the password file is looked at for a change."""
_SLIDE_S = 60.0
"""A session's expiry moves on only when a minute of it has passed (not on every request)."""
_FileId = tuple[int, int, int]


class Auth:
    """The password of one console, its sessions and its login throttle."""

    def __init__(self, web: WebSettings, data_dir: Path, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = pw.password_path(web, data_dir)
        self.lifetime_s = web.session_hours * 3600.0
        self.clock = clock
        self.throttle = LoginThrottle(clock)
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self._hash: str | None = None
        self._seen: _FileId | None = None
        self._checked = -RECHECK_S
        self._lock = asyncio.Lock()
        self._checking = asyncio.Lock()
        """One password check at a time, whoever asks: each takes 64 MiB and every core
        for ~0.1 s, and the throttle holds one attempt in flight per *client* only."""

    def has_password(self) -> bool:
        """Whether a usable password is set (as of the last :meth:`refresh`)."""
        return self._hash is not None

    async def refresh(self, *, force: bool = False) -> None:
        """Read the password file again if it changed (at most once per :data:`RECHECK_S`)."""
        now = self.clock()
        if not force and now - self._checked < RECHECK_S:
            return
        self._checked = now
        seen, found, problem = await asyncio.to_thread(self._read_if_changed, self._seen)
        if seen == self._seen:
            return
        if problem is not None:
            log.warning("console_password_unusable", problem=problem,
                        meaning="only loopback clients are served until it is set again")
        elif self._hash is not None and found != self._hash:
            log.info("console_password_changed", path=str(self.path), sessions_ended=len(
                self.sessions))
        if found != self._hash:
            self.sessions.clear()
        self._seen, self._hash = seen, found

    def _read_if_changed(self, seen: _FileId | None,
                         ) -> tuple[_FileId | None, str | None, str | None]:
        """(file identity, hash, problem); the identity alone when it is unchanged."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None, None, None
        except OSError as exc:
            return (0, 0, 0), None, f"{self.path}: {exc.strerror or exc}"
        now_seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if now_seen == seen:
            return seen, self._hash, None
        try:
            return now_seen, pw.read_hash(self.path), None
        except pw.PasswordError as exc:
            return now_seen, None, str(exc)

    async def verify(self, password: str) -> bool:
        """Whether ``password`` is the console's (hashing on a thread)."""
        stored = self._hash
        if stored is None:
            return False
        await self._checking.acquire()  # held until the thread ends, even if we are cancelled
        check = asyncio.ensure_future(asyncio.to_thread(pw.matches, stored, password))
        check.add_done_callback(lambda _done: self._checking.release())
        ok = await asyncio.shield(check)
        if ok and await asyncio.to_thread(pw.needs_rehash, stored):
            try:  # made with older parameters: today's, now that the password is at hand
                await self.set_password(password, end_sessions=False)
            except pw.PasswordError as exc:  # a read-only place: the old hash still works
                log.warning("console_password_not_rehashed", problem=str(exc))
        return ok

    async def set_password(self, password: str, *, end_sessions: bool = True) -> None:
        """Set (or reset) the password; every session ends unless ``end_sessions`` is false.

        A password too short is a :class:`~appliance.console.password.PasswordError`.
        """
        pw.check_new(password)
        async with self._lock:
            await self._store(password)
        if end_sessions:
            self.sessions.clear()

    async def first_password(self, password: str) -> bool:
        """Set the password only if none is set (the first-run page); ``False``: one was."""
        pw.check_new(password)
        async with self._lock:
            await self.refresh(force=True)
            if self.has_password():
                return False
            await self._store(password)
        return True

    async def _store(self, password: str) -> None:
        stored = await asyncio.to_thread(pw.hash_password, password)
        await asyncio.to_thread(pw.write_hash, self.path, stored)
        seen, found, _problem = await asyncio.to_thread(self._read_if_changed, None)
        self._seen, self._hash = seen, found
        log.info("console_password_set", path=str(self.path))

    def login(self, client: str | None) -> Session:
        """A new session for a client that gave the right password."""
        now = self.clock()
        for sid in [s for s, found in self.sessions.items() if found.expires <= now]:
            del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.popitem(last=False)
        session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
                          who=f"admin@{client or 'unknown'}", expires=now + self.lifetime_s)
        self.sessions[session.id] = session
        return session

    def session(self, sid: str | None) -> Session | None:
        """The live session with id ``sid`` (its expiry moved on), or ``None``."""
        if not sid:
            return None
        found = self.sessions.get(sid)
        if found is None:
            return None
        now = self.clock()
        if found.expires <= now:
            del self.sessions[sid]
            return None
        if found.expires - now < self.lifetime_s - _SLIDE_S:
            found = self.sessions[sid] = dataclasses.replace(found,
                                                             expires=now + self.lifetime_s)
        self.sessions.move_to_end(sid)
        return found

    def logout(self, sid: str) -> None:
        """End a session."""
        self.sessions.pop(sid, None)

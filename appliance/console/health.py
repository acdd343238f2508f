"""The Health page: the ``doctor`` table and a live tail of the log.

The checks are :func:`appliance.doctor.run_checks`, run on a thread (some wait
for the broker or ``systemctl``), one run at a time: a page that asks while a
run is going gets that run's rows. The log tail is Server-Sent Events from the
console's :class:`~appliance.console.log_tail.LogTail`: first the kept lines,
then each new one, at or above the ``level`` asked for, never compressed, with
a heartbeat comment every :data:`~appliance.console.live.HEARTBEAT_S`. Secrets are redacted in both.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from appliance.api.errors import ApiError, Problem
from appliance.console.app import View
from appliance.console.live import HEARTBEAT, HEARTBEAT_S, event, open_stream
from appliance.console.log_tail import LEVELS, LogTail
from appliance.console.roles import Access
from appliance.doctor import run_checks
from appliance.logs import redact

if TYPE_CHECKING:
    from appliance.console.app import Console


MAX_LOG_STREAMS = 4
"""Log streams open at once (each follows every log event)."""
WRITE_TIMEOUT_S = 10.0
"""A log stream whose client has not taken a line for this long is closed."""


class Health(View):
    """The page, the checks and the log stream; owns the log tail."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tail = LogTail()
        self._checks: asyncio.Task[list[dict[str, str]]] | None = None
        self._streams = 0

    def add_routes(self, console: Console) -> None:
        """``/health``, ``/health/checks`` and ``/health/log``."""
        console.add("GET", "/health", self.page, Access.ADMIN)
        console.add("GET", "/health/checks", self.checks, Access.ADMIN)
        console.add("GET", "/health/log", self.log, Access.ADMIN)

    def start(self) -> None:
        """Start keeping the log's events."""
        self.tail.install()

    async def close(self) -> None:
        """Stop keeping them."""
        self.tail.uninstall()
        if self._checks is not None:
            await asyncio.gather(self._checks, return_exceptions=True)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The table (filled by the script) and the log."""
        return self.console.pages.render(request, "health.html", "Health",
                                         {"levels": list(LEVELS)})

    async def checks(self, _request: web.Request) -> web.StreamResponse:
        """``{"checks": [{"name", "status", "detail"}]}``, as ``appliance doctor`` has them."""
        if self._checks is None or self._checks.done():
            self._checks = asyncio.create_task(asyncio.to_thread(self._run_checks))
        return web.json_response({"checks": await asyncio.shield(self._checks)})

    def _run_checks(self) -> list[dict[str, str]]:
        return [{"name": c.name, "status": c.status, "detail": redact(c.detail)}
                for c in run_checks(self.console.parts.settings)]

    async def log(self, request: web.Request) -> web.StreamResponse:
        """``GET health/log?level=info``: the log as Server-Sent Events (``event: log``)."""
        name = request.query.get("level", "info").lower()
        if name not in LEVELS:
            raise ApiError(Problem.BAD_REQUEST, f"level must be one of {', '.join(LEVELS)}, "
                           f"not {name[:20]!r}")
        minimum = LEVELS[name]
        if self._streams >= MAX_LOG_STREAMS:
            raise ApiError(Problem.UNAVAILABLE, f"too many log streams are open "
                           f"({MAX_LOG_STREAMS}): close a Health page and reload")
        self._streams += 1
        try:
            response = await open_stream(request)
            await self._follow(request, response, minimum)
        finally:
            self._streams -= 1
        return response

    async def _follow(self, request: web.Request, response: web.StreamResponse,
                      minimum: int) -> None:
        """Send the kept lines, then each new one; a client that stops reading is cut off."""

        async def send(data: bytes) -> None:
            try:
                await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)
            except TimeoutError:
                if request.transport is not None:  # its socket is full: it is not reading
                    request.transport.abort()
                raise ConnectionResetError("the log's reader stopped reading") from None

        with contextlib.suppress(ConnectionError), self.tail.subscribe(minimum) as subscriber:
            sent = 0
            for line in self.tail.recent(minimum):
                await send(event("log", line))
                sent = line["seq"]
            while not subscriber.overflowed:
                try:
                    line = await asyncio.wait_for(subscriber.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await send(HEARTBEAT)
                    continue
                if line["seq"] > sent:  # not one of the kept lines sent above
                    await send(event("log", line))

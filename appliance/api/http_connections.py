"""The HTTP server's connections: how many, for how long, and aiohttp's own refusals.

aiohttp bounds neither: a connection that never finishes its request head
(one byte a second) stays open for ever, and so does any number of them,
until the process runs out of file descriptors and the device's own files
(espeak-ng, the thermal zone) fail to open. So every connection here is a
:class:`Connection`:

* it must send its first request head within ``header_timeout_s`` (that
  deadline alone, whatever ``idle_timeout_s`` is); once served, aiohttp's
  keep-alive timer closes it ``idle_timeout_s`` after its last answer (a
  half-sent head then included);
* the :class:`Pool` holds at most ``max_connections``: one more first drops
  the connection that has been idle longest (a slow or silent client, never
  one with a request in progress), so a well-behaved client is served even
  while idle sockets fill the pool; only when every connection is busy is
  the newcomer answered 503 and closed;
* a request aiohttp cannot parse (a header over 8 KiB, a bad method or
  version) is answered in the API's own shape, without echoing its bytes;
* what is dropped or refused is logged as ``http_refused`` through a
  :class:`~appliance.log_limit.RateLimitedLog`, at most one line every few
  seconds with counts (``dropped_idle``, ``slow_header``, ``busy``,
  ``malformed``), never a line per connection.

:class:`GuardedSite` listens with this protocol; aiohttp's own sites take no
protocol factory.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import http_exceptions, web

from appliance.api.errors import ApiError, Problem
from appliance.api.http_checks import ip_of
from appliance.api.http_errors import error_response
from appliance.config.schema_api import HttpSettings
from appliance.log_limit import RateLimitedLog
from appliance.logs import get_logger
from appliance.service.guard import INTERNAL_ERROR

log = get_logger("http_api")

HEAD_BYTES = 16
"""Bytes of a request's head kept to tell its API, should aiohttp refuse to parse it."""
_OPENAI_HEAD = re.compile(rb"[A-Za-z]+ /v1/")


PER_CLIENT_SHARE = 4
"""One address other than loopback holds at most this share of the pool (a quarter)."""


class Pool:
    """The open connections, at most ``limit`` of them, and a quarter per network address.

    The per-address cap keeps one LAN client that trickles request bodies (each
    connection busy for ``body_timeout_s``) from taking every place: the others
    and loopback (the device's own clients) still get in.
    """

    def __init__(self, limit: int, http: HttpSettings) -> None:
        self.limit = limit
        self.per_client = max(1, limit // PER_CLIENT_SHARE)
        self.http = http
        self.refusals = RateLimitedLog(log, "http_refused")
        self.live: set[Connection] = set()

    def admit(self, newcomer: Connection) -> bool:
        """Make room for ``newcomer``; ``False`` if every connection is busy."""
        peer = newcomer.peer
        if peer is not None and not _loopback(peer) and \
                sum(1 for c in self.live if c.peer == peer) >= self.per_client:
            self.refusals.warning("per_client")
            return False
        if len(self.live) >= self.limit:
            idle = [c for c in self.live if not c.busy]
            if not idle:
                self.refusals.warning("busy")
                return False
            min(idle, key=lambda c: c.idle_since).drop("dropped_idle")
        self.live.add(newcomer)
        return True


class Connection(web.RequestHandler):
    """One client connection of the HTTP API (an aiohttp protocol) with its deadlines."""

    def __init__(self, manager: web.Server, pool: Pool) -> None:
        http = pool.http
        super().__init__(manager, loop=asyncio.get_running_loop(),
                         keepalive_timeout=http.idle_timeout_s,
                         lingering_time=http.body_timeout_s,
                         auto_decompress=False,  # http_body inflates, bounded, after auth
                         access_log=None)
        self.pool = pool
        self.peer: str | None = None
        self.busy = False
        self.served = 0
        self.idle_since = time.monotonic()
        self._head = b""
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take a place in the pool and start the head's deadline, or answer 503."""
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) and peername else None
        if not self.pool.admit(self):
            _refuse(transport)  # never started: aiohttp knows nothing of it
            return
        super().connection_made(transport)
        # aiohttp (3.10 on) also arms its keep-alive timer at connect, and would close a
        # silent client at idle_timeout_s, uncounted. The first wait is the head's, and ours;
        # keep_alive(True) cancels that timer and leaves keep-alive on for after an answer.
        self.keep_alive(True)
        self._deadline = asyncio.get_running_loop().call_later(
            self.pool.http.header_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Leave the pool."""
        self.pool.live.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Keep the first bytes of each request's head (its path tells its API)."""
        if not self.busy and len(self._head) < HEAD_BYTES:
            self._head += data[:HEAD_BYTES - len(self._head)]
        super().data_received(data)

    def request_started(self) -> None:
        """A whole request head arrived (the routes' guard calls this)."""
        self.busy = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def request_ended(self) -> None:
        """Its answer is done; from now on the connection is idle (kept alive)."""
        self.busy = False
        self.served += 1
        self.idle_since = time.monotonic()
        self._head = b""

    def drop(self, reason: str) -> None:
        """Close this connection at once, counting why (its place is free at once)."""
        self.pool.live.discard(self)
        self.pool.refusals.warning(reason)
        self.force_close()

    def _head_too_slow(self) -> None:
        self._deadline = None
        if not self.busy and not self.served:
            self.drop("slow_header")

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp refused before any route saw it, in the API's shape."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer had begun; the connection is dropped")
        api = "openai" if _OPENAI_HEAD.match(self._head) else "ollama"
        if status == 400:
            self.pool.refusals.warning("malformed")
            error = ApiError(Problem.BAD_REQUEST, describe(exc))
        else:
            log.error("http_connection_failed", status=status, exc_info=exc)
            error = ApiError(Problem.INTERNAL, INTERNAL_ERROR)
        response = error_response(api, error)
        response.force_close()
        return response


def describe(exc: BaseException | None) -> str:
    """What is wrong with a request aiohttp could not parse, in words of ours (no echo)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return "a request line or header is too long (at most 8 KiB each)"
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "not an HTTP method: use GET or POST"
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "a malformed request line: expected METHOD /path HTTP/1.1"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "a malformed header"
    return "a malformed HTTP request"


def _refuse(transport: asyncio.BaseTransport) -> None:
    body = json.dumps({"error": "too many connections are busy; try again shortly"}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(head.encode() + body)
    transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site whose protocol is :class:`Connection`, so ``runner.addresses`` lists it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, pool: Pool) -> None:
        super().__init__(runner)
        self.web_server = runner.server
        self.host, self.port, self.pool = host, port, pool

    @property
    def name(self) -> str:
        """The address it listens on, as a URL."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen."""
        await super().start()
        server = self.web_server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Connection(server, self.pool), self.host, self.port)


def _loopback(address: str) -> bool:
    ip = ip_of(address)
    return ip is not None and ip.is_loopback

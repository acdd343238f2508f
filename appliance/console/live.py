r"""``GET /events``: the console's live data, as Server-Sent Events to every open page.

One :class:`Hub` serves every browser. An event is rendered once, as bytes,
and the same bytes are queued for each client, so a change costs one JSON
encoding however many consoles are open. Each client's queue is bounded
(:data:`QUEUE_EVENTS`): a client that does not read (a phone gone to sleep on
a slow link) is dropped when its queue is full, never buffered without end,
and its browser reconnects by itself when it wakes. At most :data:`MAX_CLIENTS`
streams are open at once: each holds a connection of the server's bounded pool
for as long as it lasts, and with ``public_status`` anyone may open them, so
beyond that a stream is a 503 and the pool keeps room for pages and the login.
A comment line every :data:`HEARTBEAT_S` keeps proxies from closing a quiet
stream and notices a client that went away. The stream is never compressed (a compressed stream is
held back by the compressor, and Home Assistant's ingress used to break on it).

A newly connected client first gets what the hub keeps as ``initial`` (the
latest ``state`` event), so the page is current at once.

    >>> event("state", {"temp_c": 61.5})
    b'event: state\ndata: {"temp_c":61.5}\n\n'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from appliance.api.errors import ApiError, Problem
from appliance.logs import get_logger

log = get_logger("console")

QUEUE_EVENTS = 32
"""Events a client may fall behind by before it is dropped."""
MAX_CLIENTS = 32
"""Streams open at once (well under the console's connection pool, 128)."""
HEARTBEAT_S = 15.0
"""A comment line after this long without an event."""
HEARTBEAT = b": keep-alive\n\n"


def event(name: str, data: Any) -> bytes:
    """One SSE event: ``name`` and ``data`` as compact JSON on one line."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"event: {name}\ndata: {body}\n\n".encode()


async def open_stream(request: web.Request) -> web.StreamResponse:
    """A prepared, uncompressed ``text/event-stream`` response (nginx: not buffered)."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


class Client:
    """One open stream: its bounded queue of rendered events."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
        self.dropped = False

    def end(self) -> None:
        """Empty the queue and let the stream end (it reads ``None`` next)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    """Every connected client; :meth:`publish` queues one rendered event for all.

    ``initial`` gives the events a new client gets first (the current state).
    A publisher asks :attr:`listening` before it spends anything on rendering.
    """

    def __init__(self, initial: Callable[[], list[bytes]] = list,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.initial = initial
        self.heartbeat_s = heartbeat_s
        self.clients: set[Client] = set()
        self.dropped = 0

    @property
    def listening(self) -> bool:
        """Whether any client is connected (else nothing needs rendering)."""
        return bool(self.clients)

    def publish(self, data: bytes) -> None:
        """Queue ``data`` (one rendered event) for every client; drop those that are full."""
        for client in list(self.clients):
            try:
                client.queue.put_nowait(data)
            except asyncio.QueueFull:
                self._drop(client)

    def _drop(self, client: Client) -> None:
        """A client fell :data:`QUEUE_EVENTS` behind: end it and free its queue."""
        self.clients.discard(client)
        client.dropped = True
        self.dropped += 1
        client.end()
        log.info("console_client_dropped", client=client.request.remote,
                 reason="too slow to read its events")
        transport = client.request.transport
        if transport is not None:  # a write blocked on a full socket ends now
            transport.abort()

    def subscribe(self, request: web.Request) -> Client:
        """A new client, with the initial events already queued."""
        client = Client(request)
        for data in self.initial()[:QUEUE_EVENTS]:
            client.queue.put_nowait(data)
        self.clients.add(client)
        return client

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /events``: the stream, until the client goes, is dropped or the hub closes."""
        if len(self.clients) >= MAX_CLIENTS:
            raise ApiError(Problem.UNAVAILABLE, f"too many live consoles are open "
                           f"({MAX_CLIENTS}): close one, or reload this page later")
        client = self.subscribe(request)  # counted now: no await between the check and here
        try:
            response = await open_stream(request)
        except BaseException:
            self.clients.discard(client)
            raise
        try:
            while True:
                try:
                    data = await asyncio.wait_for(client.queue.get(), self.heartbeat_s)
                except TimeoutError:
                    data = HEARTBEAT
                if data is None:
                    break
                await response.write(data)
        except ConnectionError:
            pass  # the client went away, or was dropped
        finally:
            self.clients.discard(client)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    def close(self) -> None:
        """End every stream (the console stops)."""
        for client in list(self.clients):
            client.end()
        self.clients.clear()

"""One fuzz case on the wire, and its verdict: ``None`` when it got what it must, else why not.

Connections are raw sockets read with :meth:`asyncio.AbstractEventLoop.sock_recv`,
not streams: a server that answers and then hangs up on a client that is still
sending makes the kernel reset the connection, and a stream reader would drop
the answer that had already arrived; here every byte received before the reset
is kept. Each exchange has a deadline; a server that answers nothing by then
fails its case.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from appliance.bench.fuzz_http import ECHO_MARK, HttpCase
from appliance.bench.fuzz_wyoming import WyomingCase, event
from appliance.service.guard import INTERNAL_ERROR


class Silence(str):
    """A verdict that nothing came back before the deadline (the service may have stalled)."""


class RawConnection:
    """A TCP connection to 127.0.0.1 that keeps what it received, whatever happens after."""

    def __init__(self, port: int, deadline: float) -> None:
        self.port, self.deadline = port, deadline
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.received = bytearray()
        self.closed = False  # the server closed (or reset) the connection

    async def __aenter__(self) -> RawConnection:
        await asyncio.wait_for(self.loop.sock_connect(self.sock, ("127.0.0.1", self.port)),
                               self._left())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.sock.close()

    def _left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    async def send(self, data: bytes, *, half_close: bool = False) -> None:
        """Send ``data``; a server that already hung up is not our failure."""
        try:
            await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), self._left())
            if half_close:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def more(self) -> bool:
        """Receive what arrives next; ``False`` at the end (close, reset or the deadline)."""
        if self.closed:
            return False
        try:
            chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 16),
                                           self._left())
        except (TimeoutError, OSError):
            chunk = b""
        if not chunk:
            self.closed = time.monotonic() < self.deadline
            return False
        self.received += chunk
        return True

    @property
    def timed_out(self) -> bool:
        """Whether the deadline passed before the server closed."""
        return not self.closed and time.monotonic() >= self.deadline


# --- HTTP --------------------------------------------------------------------------------------

class Response:
    """The responses in what an HTTP server sent on one connection."""

    def __init__(self, data: bytes) -> None:
        self.status, self.body, self.extra = 0, b"", b""
        head, sep, rest = bytes(data).partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {k.strip().lower(): v.strip() for k, _, v in (
            line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            self.body, self.extra = _dechunk(rest)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            self.body, self.extra = rest[:length], rest[length:]
        else:
            self.body = rest

    def json(self) -> Any:
        """The body as JSON (``None`` if it is not)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return body, b""
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            return body, data[2:]
        body, data = body + data[:size], data[size + 2:]


ANSWERABLE_WAIT = 6
"""How many times the per-case deadline an answerable case may take (it queues for the model)."""


def error_shape(api: str, body: Any) -> bool:
    """Whether ``body`` is an error in ``api``'s own shape (``any``: either)."""
    ollama = isinstance(body, dict) and isinstance(body.get("error"), str) and bool(
        body["error"])
    openai = isinstance(body, dict) and isinstance(body.get("error"), dict) and isinstance(
        body["error"].get("message"), str)
    return {"ollama": ollama, "openai": openai}.get(api, ollama or openai)


async def exchange_http(port: int, case: HttpCase, timeout_s: float) -> str | None:
    """Send one hostile request; why its answer breaks the contract, or ``None``."""
    if case.answerable:  # it may wait its turn for the model, like any question
        timeout_s *= ANSWERABLE_WAIT
    async with RawConnection(port, time.monotonic() + timeout_s) as conn:
        await conn.send(case.raw, half_close=case.half_close)
        while await conn.more():
            pass
    if conn.timed_out:
        return Silence(f"no answer within {timeout_s:.0f} s")
    if not conn.received:
        return None if case.may_close else "closed without an answer"
    response = Response(bytes(conn.received))
    body = response.json()
    if case.answerable and response.status == 200 and isinstance(body, dict) and not (
            error_shape(case.api, body) or response.extra.strip()):
        return None
    if not 400 <= response.status < 500:
        return f"status {response.status or 'unreadable'}: {response.body[:80]!r}"
    if not error_shape(case.api, body):
        return f"{response.status} not in the {case.api} error shape: {response.body[:80]!r}"
    if ECHO_MARK.encode() in conn.received:
        return f"{response.status} echoes the request"
    if response.extra.strip():
        return f"more than one response: {response.extra[:60]!r}"
    return None


async def fetch_http(port: int, raw: bytes, timeout_s: float) -> Response:
    """Send a well-behaved request and read its whole response."""
    async with RawConnection(port, time.monotonic() + timeout_s) as conn:
        await conn.send(raw)
        while await conn.more():
            pass
    return Response(bytes(conn.received))


# --- Wyoming -----------------------------------------------------------------------------------

class EventReader:
    """Wyoming events from a :class:`RawConnection`, as ``(type, data)``."""

    def __init__(self, conn: RawConnection) -> None:
        self.conn = conn
        self.at = 0

    async def next(self) -> tuple[str, dict[str, Any]] | None:
        """The next event, or ``None`` at the end of the connection."""
        buffer = self.conn.received
        while (end := buffer.find(b"\n", self.at)) < 0:
            if not await self.conn.more():
                return None
        try:
            header = json.loads(buffer[self.at:end])
        except ValueError:
            return "unreadable", {}
        need = end + 1 + header.get("data_length", 0) + header.get("payload_length", 0)
        while len(buffer) < need:
            if not await self.conn.more():
                return None
        data = dict(header.get("data") or {})
        if header.get("data_length"):
            try:
                data.update(json.loads(buffer[end + 1: end + 1 + header["data_length"]]))
            except ValueError:
                return "unreadable", {}
        self.at = need
        return str(header["type"]), data


async def exchange_wyoming(port: int, case: WyomingCase, timeout_s: float) -> str | None:
    """Send one hostile connection's bytes; why the answer breaks the contract, or ``None``."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with RawConnection(port, time.monotonic() + timeout_s) as conn:
        reader = EventReader(conn)

        async def until(kind: str) -> bool:
            while (got := await reader.next()) is not None:
                seen.append(got)
                if got[0] == kind:
                    return True
            return False

        await conn.send(case.raw, half_close=case.half_close)
        if case.framing:
            await until("")  # to the end of the connection
        elif await until("error") and not conn.closed:
            await conn.send(event("ping", {"text": "after"}))  # nothing more than its pong
            if not await until("pong") and conn.timed_out:
                return Silence(f"no pong after the error within {timeout_s:.0f} s")
    return _wyoming_verdict(case, conn, seen, timeout_s)


def _wyoming_verdict(case: WyomingCase, conn: RawConnection,
                     seen: list[tuple[str, dict[str, Any]]], timeout_s: float) -> str | None:
    errors = [data.get("text") for kind, data in seen if kind == "error"]
    others = [kind for kind, _ in seen if kind not in ("error", "pong")]
    if others:
        return f"answered {others[:3]} (errors: {errors[:2]})"
    if len(errors) > 1:
        return f"{len(errors)} errors: {errors[:2]}"
    if INTERNAL_ERROR in errors:
        return "internal error"
    if case.framing:
        return f"still open after {timeout_s:.0f} s" if conn.timed_out else None
    if not errors:
        return ("closed without an error" if conn.closed
                else Silence(f"no error within {timeout_s:.0f} s"))
    return None

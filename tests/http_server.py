"""A loopback HTTP file server with Range support that can also misbehave, on request.

Besides serving a body honestly, it can do what a broken link or a hostile mirror
does: cut a transfer short, send a truncated chunked body, lie in its headers, send a
206 for a range nobody asked for, trickle, stall, reset the connection, or redirect.
Responses are written as raw bytes, so any header value can be sent as it is.
"""

from __future__ import annotations

import array
import fcntl
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal


@dataclass
class Served:
    """What the server sends, how it misbehaves, and what it saw."""

    body: bytes
    cut_at: int | None = None  # close the connection after this many bytes, once
    ranges: list[str | None] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # other paths, e.g. /voice.onnx
    headers: dict[str, str] = field(default_factory=dict)  # sent instead of the honest ones
    status: str | None = None  # sent instead of the honest status, e.g. "206 Partial Content"
    chunked: bool = False  # Transfer-Encoding: chunked (cut_at then ends inside a chunk)
    range_reply: Literal["honest", "whole", "ignore"] = "honest"  # to a Range request:
    # 206 as asked, 206 with the whole body (and a Content-Range saying so), or 200
    reset_every: int | None = None  # send this many bytes, then reset the connection (RST)
    stall_at: int | None = None  # send this many bytes, then nothing until shut down
    silent: bool = False  # read the request, never answer
    trickle_s: float | None = None  # pause between 16-byte pieces of the body
    trickle_head: bool = False  # ... and of the status line and headers too
    redirect: str | None = None  # answer 302 with this Location
    tls_pem: Path | None = None  # serve https with this certificate and key


def _wait_until_received(sock: socket.socket) -> None:
    """Wait until the peer's kernel has acknowledged everything sent, so a reset loses none."""
    unsent = array.array("i", [0])
    while True:
        fcntl.ioctl(sock, termios.TIOCOUTQ, unsent)
        if unsent[0] == 0:
            return
        time.sleep(0.001)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, *_: object) -> None:
        pass  # a client that hung up on a hostile answer is what the tests want


@contextmanager
def serve(served: Served) -> Iterator[str]:
    """Serve ``served.body`` at ``http://127.0.0.1:PORT/model`` (and ``served.files``)."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            header = self.headers.get("Range")
            served.ranges.append(header)
            self.close_connection = True
            if served.silent:
                stop.wait()
                return
            if served.redirect is not None:
                self._send(f"HTTP/1.1 302 Found\r\nLocation: {served.redirect}\r\n"
                           "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return
            body = served.files.get(self.path, served.body)
            start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
            if header and served.range_reply == "ignore":
                start = 0
            if header and start >= len(body):
                self._send(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */"
                           + str(len(body)).encode() + b"\r\nContent-Length: 0\r\n\r\n")
                return
            if header and served.range_reply == "whole":
                start = 0
            partial = header is not None and served.range_reply != "ignore"
            status = "206 Partial Content" if partial else "200 OK"
            head = {"Content-Length": str(len(body) - start), "Connection": "close"}
            if status.startswith("206"):
                head["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            if served.chunked:
                del head["Content-Length"]
                head["Transfer-Encoding"] = "chunked"
            head.update(served.headers)
            status = served.status or status
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items()), "", ""]
            self._send("\r\n".join(lines).encode(), trickle=served.trickle_head)
            self._send_body(body[start:], start)

        def _send_body(self, payload: bytes, start: int) -> None:
            limit = len(payload)
            for cut in (served.cut_at, served.stall_at):
                if cut is not None:
                    limit = min(limit, max(cut - start, 0))
            if served.reset_every is not None:
                limit = min(limit, served.reset_every)
            if not served.chunked:
                self._send(payload[:limit], trickle=True)
            else:
                for at in range(0, len(payload), 1 << 16):
                    piece = payload[at:at + (1 << 16)]
                    size = f"{len(piece):x}\r\n".encode()
                    if at + len(piece) > limit:  # the chunk promises more than is sent
                        self._send(size + piece[:limit - at], trickle=True)
                        break
                    self._send(size + piece + b"\r\n", trickle=True)
                else:
                    self._send(b"0\r\n\r\n")
            if limit == len(payload):
                return
            if served.cut_at is not None:
                served.cut_at = None
            elif served.stall_at is not None:
                stop.wait()
            elif served.reset_every is not None:
                self._reset()

        def _send(self, data: bytes, trickle: bool = False) -> None:
            if not (trickle and served.trickle_s):
                self.wfile.write(data)
                return
            for at in range(0, len(data), 16):
                if stop.wait(served.trickle_s):
                    return
                self.wfile.write(data[at:at + 16])

        def _reset(self) -> None:
            _wait_until_received(self.connection)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.rfile.close()  # its reference would keep the socket open past close()
            self.connection.close()

        def log_message(self, *_: object) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if served.tls_pem is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(served.tls_pem)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/model"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()

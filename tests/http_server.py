"""A loopback HTTP file server with Range support that can cut a transfer short."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    """What the server sends, and what it saw."""

    body: bytes
    cut_at: int | None = None  # close the connection after this many bytes, once
    ranges: list[str | None] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # other paths, e.g. /voice.onnx


@contextmanager
def serve(served: Served) -> Iterator[str]:
    """Serve ``served.body`` at ``http://127.0.0.1:PORT/model`` (and ``served.files``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            header = self.headers.get("Range")
            served.ranges.append(header)
            start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
            body = served.files.get(self.path, served.body)
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            payload = body[start:]
            self.send_response(206 if header else 200)
            self.send_header("Content-Length", str(len(payload)))
            if header:
                self.send_header("Content-Range",
                                 f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if served.cut_at is not None:
                self.wfile.write(payload[: served.cut_at - start])
                served.cut_at = None
                self.close_connection = True
                return
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model"
    finally:
        server.shutdown()
        server.server_close()

"""The HTTP API's doors and limits (issue 22), against ``appliance run`` and a real mosquitto.

* item 4: a foreign ``Host`` or ``Origin`` and a POST that is not JSON are refused
  before anything runs, while the real clients and the server's own pages pass;
* item 7: idle and slow connections are capped and time out, refusals are logged
  a line per few seconds, and a well-behaved client is served meanwhile;
* item 9: a gzip bomb costs nothing before the token is checked, and is bounded after;
* smaller: client mistakes are 400s in the API's shape, never ``internal error``.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.bench.broker import free_port
from appliance.hardware import rss_bytes
from tests.conftest import smollm2_path
from tests.helpers import LazyModule, eventually
from tests.services import ApplianceProcess

ollama = LazyModule("ollama")
openai = LazyModule("openai")

pytestmark = pytest.mark.slow

MODEL = smollm2_path().stem
ASK = [{"role": "user", "content": "Say hi."}]
MiB = 1 << 20


class Api:
    """``appliance run`` with the HTTP API on a free port; its watchdog pings, its log."""

    def __init__(self, start: Callable[..., ApplianceProcess], http: str = "",
                 watchdog_usec: int = 3_000_000) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = start(
            "  ask_rate_per_min: 1000\n"
            f"api:\n  http:\n    listen: 127.0.0.1:{self.port}\n{http}",
            WATCHDOG_USEC=str(watchdog_usec))
        self.watchdog_s = watchdog_usec / 1e6
        self.pings: list[float] = []
        threading.Thread(target=self._read_notify, daemon=True, name="notify").start()

    def _read_notify(self) -> None:
        """Read the notify socket all the time, as systemd does, noting each watchdog ping."""
        assert self.process.notify is not None
        sock = self.process.notify.sock
        sock.settimeout(None)
        try:
            while data := sock.recv(4096):
                if "WATCHDOG=1" in data.decode().splitlines():
                    self.pings.append(time.monotonic())
        except OSError:  # closed with the process
            pass

    def assert_fed_since(self, since: float) -> None:
        """Pings came after ``since``, never further apart than systemd's WatchdogSec."""
        eventually(lambda: any(t > since for t in self.pings), 30, "watchdog ping")
        times = [since, *(t for t in self.pings if t > since), time.monotonic()]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < self.watchdog_s, f"the watchdog went unfed for {max(gaps):.1f} s"

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def cpu_s(self) -> float:
        """CPU time the supervisor has used (user + system)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_events(self) -> list[dict[str, Any]]:
        path = self.process.workdir / f"run-{self.process.runs}.log"
        return [json.loads(line) for line in path.read_text(errors="replace").splitlines()
                if line.startswith("{")]

    def served(self) -> None:
        """A well-behaved client gets its answer (the real Ollama client, a short chat)."""
        answer = ollama.Client(host=self.url, timeout=120).chat(
            model=MODEL, messages=ASK, options={"num_predict": 4})
        assert answer.done


def raw_exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """A raw HTTP response's status, headers and JSON body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (reads end or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def ollama_shaped(body: Any) -> str:
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def openai_shaped(body: Any) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    return error


# --- item 4: CSRF and DNS rebinding --------------------------------------------------------------

def test_cross_site_and_rebound_requests_are_refused_before_anything_runs(
        start: Callable[..., ApplianceProcess]) -> None:
    api = Api(start, "    allowed_origins: [http://webui.lan:8080]\n")
    chat = {"model": MODEL, "messages": ASK, "stream": False, "options": {"num_predict": 4}}
    # A page's "simple" cross-site POSTs: text/plain (a fetch), a form (curl -d without -H).
    for kind in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        refused = httpx.post(f"{api.url}/api/chat", content=json.dumps(chat),
                             headers={"Content-Type": kind}, timeout=30)
        assert refused.status_code == 415 and "application/json" in ollama_shaped(refused.json())
    refused = httpx.post(f"{api.url}/v1/chat/completions", content=json.dumps(chat),
                         headers={"Content-Type": "text/plain"}, timeout=30)
    assert refused.status_code == 415
    assert openai_shaped(refused.json())["code"] == "unsupported_media_type"
    # Any other page's origin, even with a JSON body.
    foreign = httpx.post(f"{api.url}/api/chat", json=chat, timeout=30,
                         headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "origin" in ollama_shaped(foreign.json())
    # DNS rebinding: a foreign name in Host reads nothing.
    for path in ("/api/tags", "/metrics", "/v1/models"):
        rebound = httpx.get(f"{api.url}{path}", headers={"Host": f"evil.example:{api.port}"},
                            timeout=30)
        assert rebound.status_code == 403, path
    assert openai_shaped(rebound.json())["code"] == "forbidden"
    # Nothing of that reached the model.
    assert not [e for e in api.log_events() if e.get("event") == "completed"]
    # Loopback names, the server's own origin and an allowed origin pass; the real clients too.
    for host in ("localhost", f"localhost:{api.port}", "127.0.0.2", f"[::1]:{api.port}",
                 socket.gethostname(), f"{socket.gethostname()}.local"):
        assert httpx.get(f"{api.url}/api/tags", headers={"Host": host}).status_code == 200
    own = httpx.post(f"{api.url}/api/chat", json=chat, timeout=120,
                     headers={"Origin": api.url})
    assert own.status_code == 200 and own.json()["done"]
    preflight = httpx.options(f"{api.url}/v1/chat/completions", headers={
        "Origin": "http://webui.lan:8080", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://webui.lan:8080"
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    listed = httpx.get(f"{api.url}/v1/models", headers={"Origin": "http://webui.lan:8080"})
    assert listed.headers["Access-Control-Allow-Origin"] == "http://webui.lan:8080"
    api.served()
    whole = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0).chat \
        .completions.create(model=MODEL, messages=ASK, max_tokens=4)  # type: ignore[arg-type]
    assert whole.choices[0].message.content is not None


# --- item 7: connections are capped and time out ------------------------------------------------

LIMITS = ("    max_connections: 20\n    header_timeout_s: 1\n    idle_timeout_s: 1\n"
          "    body_timeout_s: 1\n")


def test_idle_and_slow_connections_are_capped_and_time_out(
        start: Callable[..., ApplianceProcess]) -> None:
    api = Api(start, LIMITS)
    rss_before = rss_bytes(api.pid)
    began = time.monotonic()
    # 70 connections (the cap and 50 more): silent ones, and slowloris heads.
    sockets = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(70)]
    for sock in sockets[::2]:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    api.served()  # a well-behaved client is served while they are open
    # Every one of them is dropped: for a newcomer, or at the head's deadline.
    eventually(lambda: all(closed_by_server(s) for s in sockets), 30, "closed idle sockets")
    for sock in sockets:
        sock.close()
    # A kept-alive connection closes once idle; a body that does not come is a 408.
    kept = raw_exchange(api.port, b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert kept.startswith(b"HTTP/1.1 200")  # and then closed by the server once idle
    slow_body = raw_exchange(api.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1"
                             b"\r\nContent-Type: application/json\r\nContent-Length: 999"
                             b"\r\n\r\n{\"model\"")
    status, _, body = parse_response(slow_body)
    assert status == 408 and openai_shaped(body)["code"] == "request_timeout"
    api.assert_fed_since(began)
    assert rss_bytes(api.pid) - rss_before < 50 * MiB
    # The refusals are counted, in at most one line every five seconds.
    def refusals() -> list[dict[str, Any]]:
        return [e for e in api.log_events() if e.get("event") == "http_refused"]
    eventually(lambda: sum(e.get("dropped_idle", 0) + e.get("slow_header", 0)
                           for e in refusals()) >= 70, 30, "70 refusals in the log")
    assert len(refusals()) <= 2 + (time.monotonic() - began) / 5
    api.served()


# --- item 9: gzip bombs --------------------------------------------------------------------------

@functools.cache
def gzip_bomb() -> bytes:
    """256 MiB of zeros as about 256 KB of gzip (made once)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    return b"".join([*(packer.compress(zeros) for _ in range(256)), packer.flush()])


def test_a_gzip_bomb_is_refused_before_inflating_and_bounded_after(
        start: Callable[..., ApplianceProcess], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    api = Api(start, f"    token_file: {token}\n")
    bomb = gzip_bomb()
    rss_before, cpu_before, began = rss_bytes(api.pid), api.cpu_s(), time.monotonic()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    def unauthorized(_: int) -> int:
        return httpx.post(f"{api.url}/api/chat", content=bomb, headers=headers,
                          timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:  # 4 GiB once inflated
        assert list(pool.map(unauthorized, range(16))) == [401] * 16
    used_s = api.cpu_s() - cpu_before
    assert used_s < 0.4, f"{used_s:.2f} s of CPU"  # the bytes arrived; none was inflated
    auth = {**headers, "Authorization": "Bearer s3cret"}
    over = httpx.post(f"{api.url}/api/chat", content=bomb, headers=auth, timeout=60)
    assert over.status_code == 400 and "inflates to over 4 MiB" in ollama_shaped(over.json())
    over = httpx.post(f"{api.url}/v1/chat/completions", content=bomb, headers=auth, timeout=60)
    assert over.status_code == 400 and "4 MiB" in openai_shaped(over.json())["message"]
    small = gzip.compress(json.dumps({"model": MODEL, "messages": ASK, "stream": False,
                                      "options": {"num_predict": 4}}).encode())
    answered = httpx.post(f"{api.url}/api/chat", content=small, headers=auth, timeout=120)
    assert answered.status_code == 200 and answered.json()["done"]
    ollama.Client(host=api.url, headers={"Authorization": "Bearer s3cret"}).list()
    api.assert_fed_since(began)
    assert rss_bytes(api.pid) - rss_before < 50 * MiB
    # With a token set, every route variant is a 401 without it.
    routes = [("GET", p) for p in ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models",
                                   f"/v1/models/{MODEL}", "/metrics", "/api/nothing")]
    routes += [("HEAD", p) for _, p in routes[:7]]
    routes += [("POST", p) for p in ("/api/show", "/api/pull", "/api/chat", "/api/generate",
                                     "/v1/chat/completions", "/api/tags", "/v1/nothing")]
    for method, path in routes:
        assert httpx.request(method, f"{api.url}{path}", json={} if method == "POST" else None
                             ).status_code == 401, (method, path)


# --- smaller: client mistakes are 400s in the API's shape ---------------------------------------

def test_client_mistakes_are_400s_in_the_apis_shape_never_internal_errors(
        start: Callable[..., ApplianceProcess]) -> None:
    api = Api(start)
    deep = b'{"model": "%s", "messages": %s%s}' % (MODEL.encode(), b"[" * 100_000,
                                                   b"]" * 100_000)
    nested = httpx.post(f"{api.url}/api/chat", content=deep, timeout=30,
                        headers={"Content-Type": "application/json"})
    assert nested.status_code == 400 and "nested deeper" in ollama_shaped(nested.json())
    surrogate = (b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
                 % MODEL.encode())
    for path, shape in (("/api/chat", ollama_shaped),
                        ("/v1/chat/completions", lambda b: openai_shaped(b)["message"])):
        lone = httpx.post(f"{api.url}{path}", content=surrogate, timeout=30,
                          headers={"Content-Type": "application/json"})
        assert lone.status_code == 400
        assert "messages[0].content: a lone surrogate" in shape(lone.json())
    corrupt = httpx.post(f"{api.url}/v1/chat/completions", content=b"\x78\x9cnot deflate",
                         headers={"Content-Type": "application/json",
                                  "Content-Encoding": "deflate"}, timeout=30)
    assert corrupt.status_code == 400 and "not valid deflate" in \
        openai_shaped(corrupt.json())["message"]
    secret = b"X-Private: " + b"s3cret-cookie-" * 700  # a header over 8 KiB
    for request, shape in (
            (b"GET /api/tags HTTP/1.1\r\nHost: x\r\n" + secret + b"\r\n\r\n", ollama_shaped),
            (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + secret + b"\r\n\r\n",
             lambda b: openai_shaped(b)["message"]),
            (b"G\x01T /api/tags HTTP/1.1\r\nHost: x\r\n\r\n", ollama_shaped),
            (b"GET /api/tags HTTP/7.3-s3cret-cookie\r\nHost: x\r\n\r\n", ollama_shaped)):
        raw = raw_exchange(api.port, request)
        status, headers, body = parse_response(raw)
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert b"s3cret" not in raw and shape(body)
    # The service is unharmed: nothing failed inside, the next question is answered.
    api.served()
    events = api.log_events()
    assert not [e for e in events if e.get("event") == "http_handler_failed"]
    assert not [e for e in events if e.get("level") == "error"
                and ("http" in e.get("component", "") or "aiohttp" in e.get("component", ""))]

"""Hostile HTTP requests for the Ollama and OpenAI routes, and what each one must get back.

:func:`http_cases` makes a reproducible list of raw requests (bytes as they go
on the wire, so that framing, headers and encodings can be wrong too) across
the categories the red team used: client JSON schemas that blow up when
expanded, bad encodings and compressed bodies, non-JSON content types, foreign
``Host`` and ``Origin`` headers, oversized and malformed headers, broken
framing, wrong types, missing fields, huge numbers and deep nesting.
:func:`~appliance.bench.fuzz_servers.valid_requests` makes the well-behaved requests
sent between them; the bodies are :mod:`~appliance.bench.fuzz_bodies`'s.

The contract (checked in :mod:`~appliance.bench.fuzz_servers`): a hostile
request gets exactly one response, with a 4xx status, whose body is its API's
own error shape: Ollama's ``{"error": "..."}`` outside ``/v1/``, OpenAI's
``{"error": {"message", ...}}`` under it; a request whose request line or
headers cannot be parsed may use either shape, and must not echo what was sent.
Framing that leaves the body unfinished (the client stops sending) may instead
be closed without a response.
"""

from __future__ import annotations

import gzip
import random
import zlib
from dataclasses import dataclass
from typing import Literal

from appliance.bench.fuzz_bodies import (
    ANSWERABLE,
    SCHEMAS,
    chat_body,
    compression_bomb,
    deep_nesting,
    json_bytes,
    missing_field,
    odd_numbers,
    schema_field,
    wrong_types,
)

Api = Literal["ollama", "openai", "any"]
ECHO_MARK = "ZZECHOZZ"
"""Put into malformed request lines and headers: an error that repeats it echoes the request."""


@dataclass(frozen=True)
class HttpCase:
    """One request as sent: ``raw`` bytes, then (``half_close``) the end of our sending side."""

    kind: str
    api: Api
    raw: bytes
    half_close: bool = False
    may_close: bool = False  # unfinished framing: a close without a response is right too
    answerable: bool = False  # odd but valid (see ANSWERABLE): an answer is right too


def request(method: str, path: str, host: str, body: bytes = b"",
            headers: tuple[tuple[str, str], ...] = (), *, length: bool = True) -> bytes:
    """An HTTP/1.1 request with ``Connection: close`` (one request per connection)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    names = {name.lower() for name, _ in headers}
    if body and "content-type" not in names:
        lines.append("Content-Type: application/json")
    if length and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


ROUTES: dict[str, Api] = {"/api/chat": "ollama", "/api/generate": "ollama",
                          "/v1/chat/completions": "openai"}


# --- the cases, category by category ---------------------------------------------------------

def _post(rng: random.Random, host: str, model: str, kind: str) -> HttpCase:
    """One hostile POST of ``kind`` to a chat route."""
    path = rng.choice(list(ROUTES))
    api = ROUTES[path]
    headers: tuple[tuple[str, str], ...] = ()
    if kind in SCHEMAS:
        body = json_bytes(chat_body(path, model, **schema_field(path, SCHEMAS[kind](rng), rng)))
    elif kind == "encoding: invalid utf-8":
        body = json_bytes(chat_body(path, model, text="@")).replace(
            b"@", rng.choice([b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]))
    elif kind == "encoding: lone surrogate":
        body = json_bytes(chat_body(path, model,
                                    text=rng.choice(["\ud800", "a\udfffb", "\udc00!"])))
    elif kind == "encoding: compression bomb":
        encoding = rng.choice(["gzip", "deflate"])
        body = compression_bomb(rng.choice([8, 32, 96]), encoding)
        headers = (("Content-Encoding", encoding),)
    elif kind == "encoding: corrupt compression":
        encoding = rng.choice(["gzip", "deflate"])
        whole = json_bytes(chat_body(path, model))
        packed = gzip.compress(whole, mtime=0) if encoding == "gzip" else zlib.compress(whole)
        body = rng.choice([b"not compressed at all", packed[: len(packed) // 2],
                           packed[:10] + bytes(rng.randbytes(40)), packed[::-1]])
        headers = (("Content-Encoding", encoding),)
    elif kind == "content type":
        body = json_bytes(chat_body(path, model))
        headers = (("Content-Type", rng.choice([
            "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=zz", "application/xml", "image/png"])),)
    elif kind == "wrong types":
        body = json_bytes(rng.choice([wrong_types(path, model, rng), [1, 2], "hi", None, 5]))
    elif kind == "missing fields":
        body = json_bytes(missing_field(path, model, rng))
    elif kind == "numbers":
        body = odd_numbers(path, model, rng)
    elif kind == "deep nesting":
        body = deep_nesting(path, model, rng)
    else:  # "oversize": over the 4 MiB body limit
        body = json_bytes(chat_body(path, model, text="x" * ((4 << 20) + rng.randint(1, 9999))))
    return HttpCase(kind, api, request("POST", path, host, body, headers),
                    answerable=kind in ANSWERABLE)


def _headers(rng: random.Random, host: str, model: str, kind: str) -> HttpCase:
    path = rng.choice([*ROUTES, "/api/tags", "/metrics", "/v1/models", "/api/version"])
    api: Api = ROUTES.get(path, "openai" if path.startswith("/v1/") else "ollama")
    method = "POST" if path in ROUTES else "GET"
    body = json_bytes(chat_body(path, model)) if method == "POST" else b""
    port = host.rsplit(":", 1)[-1]
    if kind == "headers: foreign host":
        foreign = rng.choice(["evil.example", f"evil.example:{port}", f"10.9.8.7:{port}",
                              f"localhost.evil.example:{port}", f"127.0.0.1.nip.io:{port}",
                              "attacker.test:80"])
        return HttpCase(kind, api, request(method, path, foreign, body))
    if kind == "headers: foreign origin":
        origin = rng.choice(["http://evil.example", "null", "https://attacker.test:8443",
                             f"http://127.0.0.1.evil.example:{port}", "file://"])
        return HttpCase(kind, api, request(method, path, host, body, (("Origin", origin),)))
    if kind == "headers: oversized":
        size = rng.randint(9_000, 70_000)
        extra = rng.choice([(("X-Fill", "a" * size),), (("Cookie", "c=" + "b" * size),),
                            (("Authorization", "Bearer " + "t" * size),)])
        if rng.random() < 0.3:
            return HttpCase(kind, "any", request(method, "/api/tags?" + "q" * size, host))
        return HttpCase(kind, api, request(method, path, host, body, extra))
    mark = ECHO_MARK
    raw = rng.choice([
        f"G{mark}T {path} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        f"GET {path} HTTP/9.{rng.randint(2, 9)}\r\nHost: {host}\r\nX: {mark}\r\n\r\n",
        f"GET {path} {mark}\r\nHost: {host}\r\n\r\n",
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nNo colon {mark}\r\n\r\n",
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nBad Name: {mark}\r\n\r\n",
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Null: a\x00{mark}\r\n\r\n",
        f"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03{mark}\r\n\r\n",
        f"GET /{mark}\x7f HTTP/1.1\r\nHost: {host}\r\n\r\n",
    ])
    return HttpCase("headers: malformed", "any", raw.encode("latin-1"))


def _framing(rng: random.Random, host: str, model: str) -> HttpCase:
    path = rng.choice(list(ROUTES))
    api = ROUTES[path]
    body = json_bytes(chat_body(path, model))
    choice = rng.randrange(6)
    if choice == 0:  # promises more than it sends, then stops sending
        return HttpCase("framing", api, request("POST", path, host, body[: len(body) // 2], (
            ("Content-Length", str(len(body) + rng.randint(1, 5000))),)), True, True)
    if choice == 1:
        value = rng.choice(["abc", "-5", "1e3", "0x10", "99999999999999999999999", " 12 3"])
        return HttpCase("framing", api, request("POST", path, host, body, (
            ("Content-Length", value),)))
    if choice == 2:  # two lengths that disagree
        return HttpCase("framing", api, request("POST", path, host, body, (
            ("Content-Length", str(len(body))), ("Content-Length", str(len(body) + 7)))))
    if choice == 3:
        chunked = rng.choice([b"zz\r\n" + body + b"\r\n0\r\n\r\n",
                              b"%x\r\n" % (len(body) + 50) + body + b"\r\n0\r\n\r\n",
                              b"-1\r\n" + body + b"\r\n0\r\n\r\n"])
        return HttpCase("framing", api, request("POST", path, host, chunked, (
            ("Transfer-Encoding", "chunked"),)), half_close=True, may_close=True)
    if choice == 4:  # request smuggling: both a length and chunked
        return HttpCase("framing", api, request("POST", path, host, body, (
            ("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked"))))
    cut = request("POST", path, host, body)
    return HttpCase("framing", api, cut[: rng.randint(10, len(cut) - 1)], True, True)


def _route(rng: random.Random, host: str, model: str) -> HttpCase:
    method, path = rng.choice([("GET", "/api/chat"), ("PUT", "/v1/chat/completions"),
                               ("POST", "/api/nowhere"), ("GET", "/v1/nothing"),
                               ("DELETE", "/api/tags"), ("POST", "/v1/models"),
                               ("GET", "/v1/models/not-our-model")])
    body = json_bytes(chat_body("/api/chat", model)) if method != "GET" else b""
    return HttpCase("wrong route or method", "openai" if path.startswith("/v1/") else "ollama",
                    request(method, path, host, body))


POST_KINDS = ("encoding: invalid utf-8", "encoding: lone surrogate", "encoding: compression bomb",
              "encoding: corrupt compression", "content type", "wrong types", "missing fields",
              "numbers", "deep nesting", *SCHEMAS)
HEADER_KINDS = ("headers: foreign host", "headers: foreign origin", "headers: oversized",
                "headers: malformed")
HTTP_KINDS = (*POST_KINDS, "oversize", *HEADER_KINDS, "framing", "wrong route or method")
"""Every category :func:`http_cases` makes."""


def http_cases(host: str, model: str, count: int, seed: int = 7) -> list[HttpCase]:
    """``count`` reproducible hostile requests for the server at ``host`` serving ``model``."""
    rng = random.Random(seed)
    out: list[HttpCase] = []
    while len(out) < count:
        kind = rng.choice(HTTP_KINDS)
        if kind == "oversize" and rng.random() < 0.8:  # 4 MiB each: rarer than the rest
            continue
        if kind in HEADER_KINDS:
            out.append(_headers(rng, host, model, kind))
        elif kind == "framing":
            out.append(_framing(rng, host, model))
        elif kind == "wrong route or method":
            out.append(_route(rng, host, model))
        else:
            out.append(_post(rng, host, model, kind))
    return out

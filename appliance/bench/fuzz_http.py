"""Hostile HTTP requests for the Ollama and OpenAI routes, and what each one must get back.

:func:`http_cases` makes a reproducible list of raw requests (bytes as they go
on the wire, so that framing, headers and encodings can be wrong too) across
the categories the red team used: client JSON schemas that blow up when
expanded, bad encodings and compressed bodies, non-JSON content types, foreign
``Host`` and ``Origin`` headers, oversized and malformed headers, broken
framing, wrong types, missing fields, huge numbers and deep nesting.
:func:`valid_http` makes the well-behaved requests sent between them.

The contract (:func:`judge_http`): a hostile request gets exactly one response,
with a 4xx status, whose body is its API's own error shape: Ollama's
``{"error": "..."}`` outside ``/v1/``, OpenAI's ``{"error": {"message", ...}}``
under it; a request whose request line or headers cannot be parsed may use
either shape, and must not echo what was sent. Framing that leaves the body
unfinished (the client stops sending) may instead be closed without a response.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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


# --- request bodies ------------------------------------------------------------------------------

ROUTES: dict[str, Api] = {"/api/chat": "ollama", "/api/generate": "ollama",
                          "/v1/chat/completions": "openai"}


def chat_body(path: str, model: str, text: str = "Say hi.", max_tokens: int = 4,
              **extra: Any) -> dict[str, Any]:
    """A valid request body for ``path`` (a short answer), with ``extra`` fields on top."""
    if path == "/api/generate":
        body: dict[str, Any] = {"model": model, "prompt": text, "stream": False,
                                "options": {"num_predict": max_tokens}}
    elif path == "/api/chat":
        body = {"model": model, "messages": [{"role": "user", "content": text}],
                "stream": False, "options": {"num_predict": max_tokens}}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens}
    return {**body, **extra}


def _dumps(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN, Infinity and lone surrogates pass as written


def _schema_field(path: str, schema: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``schema`` where this route takes a client schema: a format or a tool's parameters."""
    tools = [{"type": "function", "function": {"name": "probe", "description": "A probe.",
                                               "parameters": schema}}]
    if rng.random() < 0.5:
        return {"tools": tools}
    if path == "/v1/chat/completions":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": schema}}}
    return {"format": schema}


def _object(properties: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "required": list(properties)[:4]}
    return {**schema, "$defs": defs} if defs else schema


def _self_references(rng: random.Random) -> dict[str, Any]:
    count = rng.randint(24, 100)
    return _object({f"p{i}": {"$ref": rng.choice(["#", "#/$defs/node"])} for i in range(count)},
                   {"node": {"$ref": "#"}})


def _ref_explosion(rng: random.Random) -> dict[str, Any]:
    levels, fan = rng.randint(4, 9), rng.randint(16, 64)
    defs: dict[str, Any] = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * fan}
                            for i in range(levels)}
    defs[f"d{levels}"] = {"type": "string"}
    return _object({"x": {"$ref": "#/$defs/d0"}}, defs)


def _huge_any_of(rng: random.Random) -> dict[str, Any]:
    branches = [{"const": f"v{i}"} for i in range(rng.randint(1000, 3000))]
    return _object({"x": {"anyOf": branches}})


def _not_a_number(rng: random.Random) -> dict[str, Any]:
    value = rng.choice([float("nan"), float("inf"), float("-inf")])
    return _object({"x": rng.choice([{"const": value}, {"enum": [1, value]},
                                     {"type": "number", "const": value}])})


def _odd_names(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(['a"b', "a\\b", '"', "\\", "x\\u0041", "\ud800", "q\udfffz", '\\"'])
    return _object({name: {"type": "string"}, "ok": {"type": "integer"}})


ANSWERABLE = frozenset({"schema: self-reference", "schema: odd property names"})
"""Schemas that look hostile but are valid JSON schema: a cycle becomes "any value" once
inlining reaches it, and quotes or backslashes in a name are escaped in the grammar. They
may be answered by the model (200), so they queue behind other generations like any question."""

SCHEMAS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "schema: self-reference": _self_references, "schema: ref explosion": _ref_explosion,
    "schema: huge anyOf": _huge_any_of, "schema: NaN const": _not_a_number,
    "schema: odd property names": _odd_names}


@functools.lru_cache(maxsize=8)
def _bomb(inflated_mib: int, encoding: str) -> bytes:
    """A small body that inflates to ``inflated_mib`` MiB of JSON (cached: slow to make)."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * (
        inflated_mib << 20) + b'"}]}'
    return gzip.compress(body, 9, mtime=0) if encoding == "gzip" else zlib.compress(body, 9)


def _wrong_types(path: str, model: str, rng: random.Random) -> dict[str, Any]:
    chat = path != "/api/generate"
    changes: list[dict[str, Any]] = [{"model": 5}, {"model": ""}, {"stream": None, "model": []}]
    if chat:
        changes += [{"messages": "hi"}, {"messages": [5]}, {"messages": [{"role": 5}]},
                    {"messages": [{"role": "user", "content": 5}]},
                    {"messages": [{"role": "user", "content": {"text": "hi"}}]},
                    {"messages": [{"role": "wizard", "content": "hi"}]}, {"messages": []},
                    {"messages": [{"role": "assistant", "content": "hi"}]},
                    {"tools": {}}, {"tools": [{"function": 5}]},
                    {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
                    {"tools": [{"type": "function", "function": {"name": "f",
                                                                 "parameters": 5}}]}]
    else:
        changes += [{"prompt": 5}, {"prompt": ["hi"]}, {"system": 5}]
    if path == "/v1/chat/completions":
        changes += [{"n": 2}, {"tool_choice": 7}, {"response_format": {"type": "xml"}},
                    {"max_tokens": "x"}, {"stop": 5}, {"temperature": "hot"},
                    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                    {"tool_choice": {"type": "function", "function": {"name": "none"}}}]
    else:
        changes += [{"options": []}, {"options": {"num_predict": "x"}},
                    {"options": {"temperature": "hot"}}, {"options": {"stop": 5}},
                    {"format": 5}, {"format": "yaml"}]
    return {**chat_body(path, model), **rng.choice(changes)}


def _missing(path: str, model: str, rng: random.Random) -> dict[str, Any]:
    body = chat_body(path, model)
    body.pop(rng.choice(["model", "prompt" if path == "/api/generate" else "messages"]))
    return body


def _numbers(path: str, model: str, rng: random.Random) -> bytes:
    field = '"temperature"' if path == "/v1/chat/completions" else '"options": {"temperature"'
    close = "" if path == "/v1/chat/completions" else "}"
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 5000])
    base = json.dumps(chat_body(path, model))[:-1]
    return f'{base}, {field}: {value}{close}}}'.encode()


def _deep(path: str, model: str, rng: random.Random) -> bytes:
    depth = rng.randint(2_000, 200_000)
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    base = json.dumps(chat_body(path, model))[:-1]
    return f'{base}, "extra": {opener * depth}1{closer * depth}}}'.encode()


# --- the cases, category by category ---------------------------------------------------------

def _post(rng: random.Random, host: str, model: str, kind: str) -> HttpCase:
    """One hostile POST of ``kind`` to a chat route."""
    path = rng.choice(list(ROUTES))
    api = ROUTES[path]
    headers: tuple[tuple[str, str], ...] = ()
    if kind in SCHEMAS:
        body = _dumps(chat_body(path, model, **_schema_field(path, SCHEMAS[kind](rng), rng)))
    elif kind == "encoding: invalid utf-8":
        body = _dumps(chat_body(path, model, text="@")).replace(
            b"@", rng.choice([b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]))
    elif kind == "encoding: lone surrogate":
        body = _dumps(chat_body(path, model, text=rng.choice(["\ud800", "a\udfffb", "\udc00!"])))
    elif kind == "encoding: compression bomb":
        encoding = rng.choice(["gzip", "deflate"])
        body, headers = _bomb(rng.choice([8, 32, 96]), encoding), (("Content-Encoding",
                                                                    encoding),)
    elif kind == "encoding: corrupt compression":
        encoding = rng.choice(["gzip", "deflate"])
        whole = _dumps(chat_body(path, model))
        packed = gzip.compress(whole, mtime=0) if encoding == "gzip" else zlib.compress(whole)
        body = rng.choice([b"not compressed at all", packed[: len(packed) // 2],
                           packed[:10] + bytes(rng.randbytes(40)), packed[::-1]])
        headers = (("Content-Encoding", encoding),)
    elif kind == "content type":
        body = _dumps(chat_body(path, model))
        headers = (("Content-Type", rng.choice([
            "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=zz", "application/xml", "image/png"])),)
    elif kind == "wrong types":
        body = _dumps(rng.choice([_wrong_types(path, model, rng), [1, 2], "hi", None, 5]))
    elif kind == "missing fields":
        body = _dumps(_missing(path, model, rng))
    elif kind == "numbers":
        body = _numbers(path, model, rng)
    elif kind == "deep nesting":
        body = _deep(path, model, rng)
    else:  # "oversize": over the 4 MiB body limit
        body = _dumps(chat_body(path, model, text="x" * ((4 << 20) + rng.randint(1, 9999))))
    return HttpCase(kind, api, request("POST", path, host, body, headers),
                    answerable=kind in ANSWERABLE)


def _headers(rng: random.Random, host: str, model: str, kind: str) -> HttpCase:
    path = rng.choice([*ROUTES, "/api/tags", "/metrics", "/v1/models", "/api/version"])
    api: Api = ROUTES.get(path, "openai" if path.startswith("/v1/") else "ollama")
    method = "POST" if path in ROUTES else "GET"
    body = _dumps(chat_body(path, model)) if method == "POST" else b""
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
    body = _dumps(chat_body(path, model))
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
    body = _dumps(chat_body("/api/chat", model)) if method != "GET" else b""
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

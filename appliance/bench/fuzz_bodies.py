"""Hostile request bodies for the Ollama and OpenAI chat routes.

:func:`chat_body` makes a valid body for a route; the rest spoil one in a
single way each: client JSON schemas that blow up when expanded
(:data:`SCHEMAS`), a compression bomb, wrong types, a missing field, numbers
JSON does not have, and nesting thousands deep. :mod:`~appliance.bench.fuzz_http`
wraps them in requests.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import zlib
from collections.abc import Callable
from typing import Any


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


def json_bytes(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN, Infinity and lone surrogates pass as written


def schema_field(path: str, schema: dict[str, Any], rng: random.Random) -> dict[str, Any]:
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
def compression_bomb(inflated_mib: int, encoding: str) -> bytes:
    """A small body that inflates to ``inflated_mib`` MiB of JSON (cached: slow to make)."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * (
        inflated_mib << 20) + b'"}]}'
    return gzip.compress(body, 9, mtime=0) if encoding == "gzip" else zlib.compress(body, 9)


def wrong_types(path: str, model: str, rng: random.Random) -> dict[str, Any]:
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


def missing_field(path: str, model: str, rng: random.Random) -> dict[str, Any]:
    body = chat_body(path, model)
    body.pop(rng.choice(["model", "prompt" if path == "/api/generate" else "messages"]))
    return body


def odd_numbers(path: str, model: str, rng: random.Random) -> bytes:
    field = '"temperature"' if path == "/v1/chat/completions" else '"options": {"temperature"'
    close = "" if path == "/v1/chat/completions" else "}"
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 5000])
    base = json.dumps(chat_body(path, model))[:-1]
    return f'{base}, {field}: {value}{close}}}'.encode()


def deep_nesting(path: str, model: str, rng: random.Random) -> bytes:
    depth = rng.randint(2_000, 200_000)
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    base = json.dumps(chat_body(path, model))[:-1]
    return f'{base}, "extra": {opener * depth}1{closer * depth}}}'.encode()

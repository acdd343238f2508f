"""Client JSON schemas cut down to what llama.cpp's grammar converter turns into a grammar.

Tool parameters and structured-output formats come from clients (Home
Assistant derives its tools' schemas from voluptuous), and
``json_schema_to_gbnf`` fails, or silently builds a grammar llama.cpp rejects
later, on much of JSON Schema. :func:`simplify` keeps the part it handles and
that shapes the output:

* ``type`` (a list of types becomes ``anyOf``), ``const``, ``enum``;
* objects: ``properties`` and ``required``; no other keys may appear;
* arrays: ``items``, and ``maxItems`` up to :data:`MAX_ITEMS`;
* ``anyOf``/``oneOf`` (as ``anyOf``), ``allOf`` of objects (merged), local
  ``$ref`` (inlined, at most :data:`MAX_DEPTH` deep).

Everything else (``pattern``, ``format``, ``minimum``, string lengths,
``minItems``, ``not``, ``if``/``then``, ``patternProperties``, remote
references...) is dropped. That widens what the grammar allows, never what
it can parse: the output is always valid JSON of the right shape. Bounds are
dropped on purpose: the converter writes ``maxLength: 60`` as sixty nested
optional groups, and llama.cpp then generated under 2 tokens/s instead of 60
with a single such string in a tool's parameters.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.api.errors import bad_request

MAX_DEPTH = 8
MAX_PROPERTIES = 48
MAX_ENUM = 64
MAX_ITEMS = 8
MAX_SCHEMA_BYTES = 64 * 1024

_SCALARS = ("string", "number", "integer", "boolean", "null")
ANY_VALUE: dict[str, Any] = {"anyOf": [{"type": t} for t in (*_SCALARS, "object", "array")]}
"""Any JSON value (an empty schema means "any object" to llama.cpp's converter)."""


def simplify(schema: Any, where: str) -> dict[str, Any]:
    """``schema`` within the subset the grammar converter handles; ``where`` names it in errors."""
    if not isinstance(schema, dict):
        raise bad_request(f"{where}: expected a JSON schema object, got {_kind(schema)}", where)
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise bad_request(f"{where}: the schema is over {MAX_SCHEMA_BYTES // 1024} KiB", where)
    return _Simplifier(schema).visit(schema, 0)


class _Simplifier:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def visit(self, node: Any, depth: int) -> dict[str, Any]:
        if not isinstance(node, dict) or depth > MAX_DEPTH:
            return ANY_VALUE
        if isinstance(node.get("$ref"), str):
            return self.visit(self._resolve(node["$ref"]), depth + 1)
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list) and node[key]:
                return _union([self.visit(alt, depth + 1) for alt in node[key]])
        if isinstance(node.get("allOf"), list) and node["allOf"]:
            return self._all_of(node, depth)
        if "const" in node and _literal_ok(node["const"]):
            return {"const": node["const"]}
        if isinstance(node.get("enum"), list):
            values = [v for v in node["enum"] if _literal_ok(v)][:MAX_ENUM]
            if values:
                return {"enum": values}
        kind = node.get("type")
        if isinstance(kind, list):
            return _union([self.visit({**node, "type": k}, depth) for k in kind
                           if isinstance(k, str)])
        if kind == "object" or (kind is None and "properties" in node):
            return self._object(node, depth)
        if kind == "array" or (kind is None and "items" in node):
            return self._array(node, depth)
        if kind in _SCALARS:
            return {"type": kind}
        return ANY_VALUE

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            return None
        target: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return None
            target = target[part]
        return target

    def _object(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = node.get("properties")
        if not isinstance(properties, dict):
            return {"type": "object"}
        kept = dict(list(properties.items())[:MAX_PROPERTIES])
        required = node.get("required")
        required = [r for r in required if r in kept] if isinstance(required, list) else []
        return {"type": "object",
                "properties": {str(k): self.visit(v, depth + 1) for k, v in kept.items()},
                "required": required}

    def _array(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        items = self.visit(node.get("items"), depth + 1) if isinstance(
            node.get("items"), dict) else ANY_VALUE
        schema: dict[str, Any] = {"type": "array", "items": items}
        most = node.get("maxItems")
        if isinstance(most, int) and not isinstance(most, bool) and 0 <= most <= MAX_ITEMS:
            schema["maxItems"] = most
        return schema

    def _all_of(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        parts = [self.visit(part, depth + 1) for part in node["allOf"]]
        if len(parts) == 1:
            return parts[0]
        if all(p.get("type") == "object" and "properties" in p for p in parts):
            return {"type": "object",
                    "properties": {k: v for p in parts for k, v in p["properties"].items()},
                    "required": list(dict.fromkeys(r for p in parts for r in p["required"]))}
        return ANY_VALUE


def _union(alternatives: list[dict[str, Any]]) -> dict[str, Any]:
    if not alternatives or any(alt is ANY_VALUE for alt in alternatives):
        return ANY_VALUE
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


def _literal_ok(value: Any) -> bool:
    """Whether the converter writes ``value`` as a grammar literal that matches its JSON.

    Its literals escape only quotes and line breaks, so a backslash or another
    control character in a string would come out as invalid JSON.
    """
    if isinstance(value, str):
        return not any(c == "\\" or ord(c) < 0x20 for c in value)
    if isinstance(value, list):
        return all(_literal_ok(v) for v in value)
    if isinstance(value, dict):
        return all(_literal_ok(k) and _literal_ok(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")

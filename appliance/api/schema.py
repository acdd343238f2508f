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

Every step is bounded, because a small schema can describe a huge one: each
``$ref`` inlined is a copy of what it names, so 50 self-references in an
``anyOf`` are 50 copies of 50 copies... (a 1.3 KB schema once froze the event
loop for 5 s this way, and 24 self-referencing properties grew the model's
worker to 2.4 GB). The expansion is counted as it is built and stops at
:data:`MAX_EXPANDED_BYTES`; the grammar is then built with a limit of
:data:`MAX_GRAMMAR_BYTES`, which also stops early. Both refusals, like every
other, are a 400 naming the field. Together they cap the CPU one schema
costs at a few milliseconds (tens for one at both limits).
"""

from __future__ import annotations

import json
import re
from itertools import islice
from typing import Any, NoReturn

from appliance.api.errors import bad_request
from appliance.llm.grammar import GrammarError, to_gbnf

MAX_DEPTH = 8
MAX_PROPERTIES = 48
MAX_ENUM = 64
MAX_ITEMS = 8
MAX_SCHEMA_BYTES = 64 * 1024
MAX_EXPANDED_BYTES = 16 * 1024
"""The most a schema may grow to with every ``$ref`` inlined (about its JSON's size)."""
MAX_GRAMMAR_BYTES = 32 * 1024
"""The most grammar text one client schema may become (a Home Assistant tool's: about 4 KB)."""

_SCALARS = ("string", "number", "integer", "boolean", "null")
ANY_VALUE: dict[str, Any] = {"anyOf": [{"type": t} for t in (*_SCALARS, "object", "array")]}
"""Any JSON value (an empty schema means "any object" to llama.cpp's converter)."""
_NODE_BYTES = 16
"""What one node of the expanded schema is counted as, besides its names and literals."""
_ANY_BYTES = len(json.dumps(ANY_VALUE))
_UNSAFE_IN_LITERAL = re.compile(r"[\\\x00-\x1f]")


def simplify(schema: Any, where: str) -> dict[str, Any]:
    """``schema`` within the subset the grammar converter handles; ``where`` names it in errors."""
    if not isinstance(schema, dict):
        raise bad_request(f"{where}: expected a JSON schema object, got {_kind(schema)}", where)
    try:
        if len(json.dumps(schema, allow_nan=False)) > MAX_SCHEMA_BYTES:
            raise bad_request(f"{where}: the schema is over {MAX_SCHEMA_BYTES // 1024} KiB",
                              where)
        simplified = _Simplifier(schema, where).visit(schema, 0)
        to_gbnf(json.dumps(simplified), MAX_GRAMMAR_BYTES)  # a check: the worker builds its own
    except ValueError:  # NaN or Infinity, which Python's JSON reader lets in
        raise bad_request(f"{where}: NaN and Infinity are not JSON values", where) from None
    except RecursionError:
        raise bad_request(f"{where}: the schema is nested too deeply", where) from None
    except GrammarError as exc:
        raise bad_request(f"{where}: {exc}", where) from None
    return simplified


class _Simplifier:
    """One schema's simplification, with what is left of its expansion budget."""

    def __init__(self, root: dict[str, Any], where: str) -> None:
        self.root = root
        self.where = where
        self.left = MAX_EXPANDED_BYTES

    def charge(self, size: int) -> None:
        """Count ``size`` bytes of expanded schema (or of input read to build it)."""
        self.left -= size
        if self.left < 0:
            self._too_large()

    def _too_large(self) -> NoReturn:
        raise bad_request(
            f"{self.where}: the schema is over {MAX_EXPANDED_BYTES // 1024} KiB once its "
            "$refs are inlined (each is a copy of what it names); use fewer references, "
            "alternatives or properties", self.where)

    def visit(self, node: Any, depth: int) -> dict[str, Any]:
        self.charge(_NODE_BYTES)
        if not isinstance(node, dict) or depth > MAX_DEPTH:
            return self._any()
        if isinstance(node.get("$ref"), str):
            self.charge(len(node["$ref"]))
            return self.visit(self._resolve(node["$ref"]), depth + 1)
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list) and node[key]:
                return _union([self.visit(alt, depth + 1) for alt in node[key]])
        if isinstance(node.get("allOf"), list) and node["allOf"]:
            return self._all_of(node, depth)
        if "const" in node:
            self.charge(len(json.dumps(node["const"])))
            if _literal_ok(node["const"]):
                return {"const": node["const"]}
        if isinstance(node.get("enum"), list):
            self.charge(len(json.dumps(node["enum"])))
            values = [v for v in node["enum"] if _literal_ok(v)][:MAX_ENUM]
            if values:
                return {"enum": values}
        kind = node.get("type")
        if isinstance(kind, list):
            self.charge(len(kind))
            kinds = dict.fromkeys(k for k in kind if isinstance(k, str))
            return _union([self._typed(node, k, depth) for k in kinds])
        return self._typed(node, kind, depth)

    def _typed(self, node: dict[str, Any], kind: Any, depth: int) -> dict[str, Any]:
        """``node`` as a value of type ``kind`` (``None``: whatever its keys say)."""
        if kind == "object" or (kind is None and "properties" in node):
            return self._object(node, depth)
        if kind == "array" or (kind is None and "items" in node):
            return self._array(node, depth)
        if kind in _SCALARS:
            return {"type": kind}
        return self._any()

    def _any(self) -> dict[str, Any]:
        self.charge(_ANY_BYTES)
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
        kept = dict(islice(properties.items(), MAX_PROPERTIES))
        self.charge(sum(len(k) + _NODE_BYTES for k in kept))
        required = node.get("required")
        if isinstance(required, list):
            self.charge(len(required))
            required = [r for r in required if isinstance(r, str) and r in kept]
        return {"type": "object",
                "properties": {k: self.visit(v, depth + 1) for k, v in kept.items()},
                "required": required if isinstance(required, list) else []}

    def _array(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        items = self.visit(node.get("items"), depth + 1) if isinstance(
            node.get("items"), dict) else self._any()
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
        return self._any()


def _union(alternatives: list[dict[str, Any]]) -> dict[str, Any]:
    if not alternatives or any(alt is ANY_VALUE for alt in alternatives):
        return ANY_VALUE
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


def _literal_ok(value: Any) -> bool:
    """Whether ``value`` is kept as a literal (``const``, ``enum``) in the grammar.

    llama-cpp-python's own converter escapes only quotes and line breaks in
    its literals, so a backslash or another control character in a string came
    out as invalid JSON. Such strings stay out, so that what :func:`simplify`
    keeps makes a valid grammar with either converter (ours,
    :mod:`appliance.llm.grammar`, escapes them). NaN never gets here:
    :func:`simplify` refuses it.
    """
    if isinstance(value, str):
        return _UNSAFE_IN_LITERAL.search(value) is None
    if isinstance(value, list):
        return all(_literal_ok(v) for v in value)
    if isinstance(value, dict):
        return all(_literal_ok(k) and _literal_ok(v) for k, v in value.items())
    return value is None or isinstance(value, bool | int | float)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")

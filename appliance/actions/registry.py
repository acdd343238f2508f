"""The allow list: the configured actions, their argument schemas and their phrases.

An action's ``args`` are JSON-schema properties in a small subset that both
our validator and llama.cpp's grammar builder understand: ``type`` (integer,
number, string, boolean), ``minimum``/``maximum``, ``enum``,
``minLength``/``maxLength``, ``description``. Every argument is required and
no other is allowed, so what the model may propose is exactly what the
verifier accepts. The grammar builder ignores numeric bounds, so a bounded
integer becomes the ``enum`` of its values in the model's schema (at most
:data:`MAX_RANGE` of them), and a ``number`` cannot be bounded at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from appliance.config.schema import Action
from appliance.voice.activation import normalize

TYPES = {"integer", "number", "string", "boolean"}
MAX_RANGE = 1000
"""Most values a bounded integer argument may take (each is a choice in the grammar)."""
KEYS = {"type", "minimum", "maximum", "enum", "minLength", "maxLength", "description"}


class SchemaError(ValueError):
    """An action's ``args`` is not in the supported schema subset."""


def check_schema(args: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaError` naming the first argument whose schema we cannot enforce."""
    for name, spec in args.items():
        if not isinstance(spec, Mapping):
            raise SchemaError(f"{name}: expected a mapping such as {{type: integer}}")
        unknown = set(spec) - KEYS
        if unknown:
            raise SchemaError(f"{name}: unsupported schema key(s) {', '.join(sorted(unknown))}; "
                              f"use {', '.join(sorted(KEYS))}")
        kind = spec.get("type")
        if kind not in TYPES:
            raise SchemaError(f"{name}: type must be one of {', '.join(sorted(TYPES))}")
        bounds = [spec.get(bound) for bound in ("minimum", "maximum")]
        if any(b is not None for b in bounds):
            if kind != "integer" or any(b is None or isinstance(b, bool) or not isinstance(
                    b, int) for b in bounds):
                raise SchemaError(f"{name}: minimum and maximum are for integers, both of "
                                  "them whole numbers (the grammar cannot bound a number)")
            low, high = bounds
            if not 0 <= high - low < MAX_RANGE:
                raise SchemaError(f"{name}: minimum to maximum must span 1 to {MAX_RANGE} "
                                  "values")
        if "enum" in spec and (not isinstance(spec["enum"], list) or not spec["enum"]):
            raise SchemaError(f"{name}: enum must be a non-empty list")


def check_args(action: Action, args: Any) -> str | None:
    """Why ``args`` do not fit ``action`` (one line), or ``None`` when they do."""
    if not isinstance(args, Mapping):
        return "args must be a JSON object"
    unknown = set(args) - set(action.args)
    if unknown:
        return f"unknown argument(s): {', '.join(sorted(unknown))}"
    for name, spec in action.args.items():
        if name not in args:
            return f"missing argument {name!r}"
        problem = _value_problem(spec, args[name])
        if problem is not None:
            return f"{name}: {problem}"
    return None


def _value_problem(spec: Mapping[str, Any], value: Any) -> str | None:
    kind = spec["type"]
    if kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        return f"expected {'an' if kind == 'integer' else 'a'} {kind}, got {value!r}"
    if "enum" in spec and value not in spec["enum"]:
        return f"must be one of {spec['enum']}"
    if "minimum" in spec and value < spec["minimum"]:
        return f"{value} is below the minimum of {spec['minimum']}"
    if "maximum" in spec and value > spec["maximum"]:
        return f"{value} is above the maximum of {spec['maximum']}"
    if kind == "string" and not spec.get("minLength", 0) <= len(value) <= spec.get(
            "maxLength", 1 << 30):
        return "has a length out of bounds"
    return None


def _for_grammar(spec: Mapping[str, Any]) -> dict[str, Any]:
    """An argument's schema as llama.cpp's grammar builder can enforce it."""
    if spec["type"] == "integer" and "minimum" in spec and "enum" not in spec:
        return {"enum": list(range(spec["minimum"], spec["maximum"] + 1))}
    return {k: v for k, v in spec.items() if k != "description"}


class Registry:
    """The configured actions, by name and by phrase."""

    def __init__(self, actions: Iterable[Action]) -> None:
        self.actions = {action.name: action for action in actions}
        self._phrases = {normalize(phrase): action.name for action in self.actions.values()
                         for phrase in action.phrases}

    def __bool__(self) -> bool:
        return bool(self.actions)

    def get(self, name: str) -> Action | None:
        """The action called ``name``, if it is on the list."""
        return self.actions.get(name)

    def by_phrase(self, text: str) -> Action | None:
        """The action whose phrase ``text`` is (case, punctuation and spaces aside)."""
        name = self._phrases.get(normalize(text))
        return self.actions[name] if name is not None else None

    def decision_schema(self, names: Iterable[str]) -> str:
        """The JSON schema (text) of a model's reply: an answer, or one of ``names``."""
        choices: list[dict[str, Any]] = [{
            "type": "object", "properties": {"answer": {"type": "string"}},
            "required": ["answer"], "additionalProperties": False}]
        for name in names:
            action = self.actions[name]
            choices.append({
                "type": "object",
                "properties": {"action": {"const": name}, "args": {
                    "type": "object", "properties": {
                        arg: _for_grammar(spec) for arg, spec in action.args.items()},
                    "required": sorted(action.args), "additionalProperties": False}},
                "required": ["action", "args"], "additionalProperties": False})
        return json.dumps({"oneOf": choices})

    def tool_list(self, names: Iterable[str]) -> str:
        """The actions as the system prompt lists them (stable text: the prefix stays cached)."""
        lines = ["You can also act. Reply with JSON only: {\"answer\": \"...\"} to answer, or "
                 "{\"action\": NAME, \"args\": {...}} to ask for one of these actions:"]
        for name in sorted(names):
            action = self.actions[name]
            args = ", ".join(f"{arg} ({spec['type']})" for arg, spec in action.args.items())
            lines.append(f"- {name}: {action.description or name}"
                         + (f"; args: {args}" if args else "; no args"))
        return "\n".join(lines)

"""The allow list: the configured actions, their argument schemas and their phrases.

An action's ``args`` are JSON-schema properties in a small subset that both
our validator and llama.cpp's grammar builder understand: ``type`` (integer,
number, string, boolean), ``minimum``/``maximum``, ``multipleOf``, ``enum``,
``minLength``/``maxLength``, ``default``, ``description``. An argument with a
``default`` may be left out (by a phrase, a rule's model, a button, ``appliance
act``) and takes its default; every other argument is required, and no other
is allowed. The default itself must fit the schema (the config check says so).

What the model may propose is what the verifier accepts, as far as a grammar
can say it: the grammar builder ignores numeric bounds, so a bounded argument
becomes the ``enum`` of its values in the model's schema when there are at
most :data:`MAX_RANGE` of them (the integers in range, or the decimals at its
``multipleOf`` step: see :func:`appliance.actions.decision.argument_grammar`).
A range the grammar cannot bound (no step, or too many values) is held by the
verifier alone, which refuses a value out of range or off its step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from appliance.actions.decision import DECIMAL_DIGITS, argument_grammar, argument_values
from appliance.config.schema import Action
from appliance.errors import ApplianceError
from appliance.voice.activation import normalize

TYPES = {"integer", "number", "string", "boolean"}
KEYS = {"type", "minimum", "maximum", "multipleOf", "enum", "minLength", "maxLength",
        "default", "description"}


class SchemaError(ApplianceError, ValueError):
    """An action's ``args`` is not in the supported schema subset (also a ``ValueError``)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


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
        _check_numeric(name, kind, spec)
        if "enum" in spec and (not isinstance(spec["enum"], list) or not spec["enum"]):
            raise SchemaError(f"{name}: enum must be a non-empty list")
        if "default" in spec:
            problem = _value_problem(spec, spec["default"])
            if problem is not None:
                raise SchemaError(f"{name}: the default {spec['default']!r} does not fit: "
                                  f"{problem}")


def _check_numeric(name: str, kind: str, spec: Mapping[str, Any]) -> None:
    """``minimum``, ``maximum`` and ``multipleOf``: numbers, on a numeric argument."""
    given = [key for key in ("minimum", "maximum", "multipleOf") if key in spec]
    if not given:
        return
    if kind not in ("integer", "number"):
        raise SchemaError(f"{name}: {', '.join(given)} apply to integers and numbers only")
    whole = kind == "integer"
    for key in given:
        value = spec[key]
        if not _is_number(value) or (whole and value != int(value)):
            raise SchemaError(f"{name}: {key} must be a {'whole ' if whole else ''}number")
    if "multipleOf" in spec and spec["multipleOf"] <= 0:
        raise SchemaError(f"{name}: multipleOf must be above 0")
    if "minimum" in spec and "maximum" in spec and spec["minimum"] > spec["maximum"]:
        raise SchemaError(f"{name}: minimum is above maximum")
    if "minimum" in spec and "maximum" in spec and "multipleOf" in spec and not \
            argument_values(spec, limit=1):
        raise SchemaError(f"{name}: no multiple of {spec['multipleOf']} lies between "
                          f"{spec['minimum']} and {spec['maximum']}")


def check_args(action: Action, args: Any) -> str | None:
    """Why ``args`` do not fit ``action`` (one line), or ``None`` when they do.

    An argument with a default may be absent (:meth:`Registry.with_defaults` fills it in).
    """
    if not isinstance(args, Mapping):
        return "args must be a JSON object"
    unknown = set(args) - set(action.args)
    if unknown:
        return f"unknown argument(s): {', '.join(sorted(unknown))}"
    for name, spec in action.args.items():
        if name not in args:
            if "default" in spec:
                continue
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
        ok = _is_number(value)
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
    if "multipleOf" in spec and not _on_step(value, spec["multipleOf"]):
        return f"{value} is not a multiple of {spec['multipleOf']}"
    if kind == "string" and not spec.get("minLength", 0) <= len(value) <= spec.get(
            "maxLength", 1 << 30):
        return "has a length out of bounds"
    return None


def _on_step(value: int | float, step: int | float) -> bool:
    """Whether ``value`` is a whole multiple of ``step``, in decimal (21.3 is one of 0.1)."""
    try:
        with localcontext(prec=DECIMAL_DIGITS):
            return Decimal(str(value)) % Decimal(str(step)) == 0
    except InvalidOperation:  # a quotient too large to compute: not on a step we can check
        return False


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

    def with_defaults(self, name: str, args: Any) -> Any:
        """``args`` (a copy) with the defaults of ``name``'s arguments that it leaves out."""
        action = self.actions.get(name)
        if not isinstance(args, Mapping):
            return args
        defaults = {} if action is None else {
            arg: spec["default"] for arg, spec in action.args.items() if "default" in spec}
        return {**defaults, **args}

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
                        arg: argument_grammar(spec) for arg, spec in action.args.items()},
                    "required": sorted(arg for arg, spec in action.args.items()
                                       if "default" not in spec),
                    "additionalProperties": False}},
                "required": ["action", "args"], "additionalProperties": False})
        return json.dumps({"oneOf": choices})

    def tool_list(self, names: Iterable[str]) -> str:
        """The actions as the system prompt lists them (stable text: the prefix stays cached)."""
        lines = ["You can also act. Reply with JSON only: {\"answer\": \"...\"} to answer, or "
                 "{\"action\": NAME, \"args\": {...}} to ask for one of these actions:"]
        for name in sorted(names):
            action = self.actions[name]
            args = ", ".join(f"{arg} ({_describe(spec)})" for arg, spec in action.args.items())
            lines.append(f"- {name}: {action.description or name}"
                         + (f"; args: {args}" if args else "; no args"))
        return "\n".join(lines)


def _describe(spec: Mapping[str, Any]) -> str:
    """An argument for the model's tool list: ``number 5 to 30 in steps of 0.5, default 20``."""
    text = spec["type"]
    if "minimum" in spec or "maximum" in spec:
        text += f" {spec.get('minimum', 'any')} to {spec.get('maximum', 'any')}"
    if "multipleOf" in spec:
        text += f" in steps of {spec['multipleOf']}"
    if "default" in spec:
        text += f", default {json.dumps(spec['default'], ensure_ascii=False)}"
    return text

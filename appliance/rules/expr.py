"""A small, safe condition language for sensor rules (never ``eval``).

Grammar::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := value (("<" | "<=" | ">" | ">=" | "==" | "!=") value)?
    value   := NUMBER | STRING | true | false | null | PATH | "(" expr ")"
             | ("present" | "changed" | "delta") "(" PATH ")"
    PATH    := NAME ("." NAME | "[" INT "]")*

``temperature > 40``, ``sensor.temp >= 30 and not door.open``,
``changed(state)``, ``delta(temperature) > 2``, ``present(motion)``.
A path missing from the event, or a comparison of unlike types, is simply
false: a sensor that omits a field does not crash the bridge. Nor does any
other JSON value: NaN, the infinities and integers beyond the float range are
not numbers, and structures too deep to compare are unequal.
Conditions nest at most :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|==|!=|<|>|\(|\)|\[|\]|\.)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""", re.VERBOSE)

_CONSTANTS = {"true": True, "false": False, "null": None}
_FUNCTIONS = ("present", "changed", "delta")
_COMPARE = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
_MISSING = object()
MAX_DEPTH = 32
"""How deeply parentheses and ``not`` may nest in a condition."""


class ExpressionError(ApplianceError, ValueError):
    """A condition that does not parse; the message says where.

    Also a :class:`ValueError`, as it was before it joined :class:`ApplianceError`:
    callers that catch bad values catch it too.
    """


@dataclass(frozen=True)
class Path:
    """A field path such as ``sensor.readings[0]``."""

    parts: tuple[str | int, ...]

    def lookup(self, data: Any) -> Any:
        """The value at this path in ``data``, or the private missing marker."""
        for part in self.parts:
            if isinstance(part, int):
                if not isinstance(data, list) or not -len(data) <= part < len(data):
                    return _MISSING
                data = data[part]
            elif isinstance(data, Mapping) and part in data:
                data = data[part]
            else:
                return _MISSING
        return data

    def __str__(self) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.parts)[1:]


@dataclass(frozen=True)
class Node:
    """One node of a parsed condition: ``op`` and its arguments."""

    op: str
    args: tuple[Any, ...]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            rest = text[pos:]
            column = pos + len(rest) - len(rest.lstrip()) + 1
            raise ExpressionError(f"unexpected {rest.strip()[:10]!r} at column {column}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def nested(self, parse: Callable[[], Any]) -> Any:
        """``parse()`` one level deeper, refusing what would exhaust the stack."""
        if self.depth >= MAX_DEPTH:
            raise ExpressionError(f"the condition nests more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            found = "the end" if token is None else repr(token[1])
            wanted = repr(value) if value else "a value"
            raise ExpressionError(f"expected {wanted}, found {found}")
        self.i += 1
        return token

    def parse(self) -> Node | Path | Any:
        node = self.expr()
        if self.peek() is not None:
            extra = self.tokens[self.i][1]
            raise ExpressionError(f"unexpected {extra!r} after a complete condition")
        return node

    def expr(self) -> Any:
        return self.chain("or", self.conj)

    def conj(self) -> Any:
        return self.chain("and", self.neg)

    def chain(self, word: str, operand: Callable[[], Any]) -> Any:
        """``operand (word operand)*`` as one flat node, however long the chain."""
        operands = [operand()]
        while self.peek() == ("name", word):
            self.take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else Node(word, tuple(operands))

    def neg(self) -> Any:
        if self.peek() == ("name", "not"):
            self.take()
            return Node("not", (self.nested(self.neg),))
        left = self.value()
        token = self.peek()
        if token is not None and token[1] in _COMPARE:
            self.take()
            return Node(token[1], (left, self.value()))
        return left

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "num":
            number = float(text)
            if not math.isfinite(number):
                raise ExpressionError(f"the number {text} is out of range")
            return number
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if text == "(":
            node = self.nested(self.expr)
            self.take(")")
            return node
        if kind != "name" or text in ("and", "or", "not"):
            raise ExpressionError(f"expected a value, found {text!r}")
        if text in _CONSTANTS:
            return _CONSTANTS[text]
        if text in _FUNCTIONS and self.peek() == ("op", "("):
            self.take("(")
            path = self.path(self.take()[1])
            self.take(")")
            return Node(text, (path,))
        return self.path(text)

    def path(self, first: str) -> Path:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", first):
            raise ExpressionError(f"expected a field name, found {first!r}")
        parts: list[str | int] = [first]
        while self.peek() in (("op", "."), ("op", "[")):
            if self.take()[1] == ".":
                parts.append(self.take()[1])
            else:
                index = self.take()[1]
                if not re.fullmatch(r"-?\d+", index):
                    raise ExpressionError(f"expected a list index, found {index!r}")
                parts.append(int(index))
                self.take("]")
        return Path(tuple(parts))


@dataclass(frozen=True)
class Condition:
    """A parsed condition, evaluated against an event and the previous one."""

    source: str
    tree: Any

    def __call__(self, event: Mapping[str, Any], previous: Mapping[str, Any] | None = None,
                 ) -> bool:
        """Whether ``event`` meets the condition (``previous``: the rule's last event)."""
        return _truthy(_eval(self.tree, event, previous or {}))

    def names(self) -> frozenset[str]:
        """The first part of every field path it reads (``greenhouse`` in ``greenhouse.t``)."""
        found: set[str] = set()
        pending = [self.tree]
        while pending:
            node = pending.pop()
            if isinstance(node, Path):
                if isinstance(node.parts[0], str):
                    found.add(node.parts[0])
            elif isinstance(node, Node):
                pending.extend(node.args)
        return frozenset(found)


def parse_condition(text: str) -> Condition:
    """Parse ``text``; raises :class:`ExpressionError` with a precise message."""
    if not text.strip():
        raise ExpressionError("the condition is empty")
    return Condition(text, _Parser(text).parse())


def _truthy(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def _number(value: Any) -> int | float | None:
    """``value`` as a number, or ``None`` when it is no number.

    NaN, the infinities and integers too large for a float (a 400-digit reading
    is no reading) are none either. Integers stay integers, which Python compares
    with floats exactly.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None


def _difference(now: Any, before: Any) -> Any:
    """``now - before`` for ``delta()``; missing unless both are numbers with a finite result."""
    a, b = _number(now), _number(before)
    if a is None or b is None:
        return _MISSING
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    result = float(a) - float(b)
    return result if math.isfinite(result) else _MISSING


def _compare(op: str, left: Any, right: Any) -> bool:
    """``left op right``: numbers by value, other values only against their own type."""
    ln, rn = _number(left), _number(right)
    if ln is not None and rn is not None:
        return bool(_COMPARE[op](ln, rn))
    if type(left) is not type(right) or type(left) in (int, float):  # NaN, inf, 10**400
        return op == "!="
    try:
        return bool(_COMPARE[op](left, right))
    except TypeError:  # unorderable: a mapping against a mapping
        return False
    except RecursionError:  # nested deeper than Python compares: taken as unequal
        return op == "!="


def _differs(now: Any, before: Any) -> bool:
    """Whether a value has changed; structures too deep to compare count as changed."""
    try:
        return bool(now != before)
    except RecursionError:
        return True


def _eval(node: Any, event: Mapping[str, Any], previous: Mapping[str, Any]) -> Any:
    if isinstance(node, Path):
        return node.lookup(event)
    if not isinstance(node, Node):
        return node
    op, args = node.op, node.args
    if op == "and":
        return all(_truthy(_eval(arg, event, previous)) for arg in args)
    if op == "or":
        return any(_truthy(_eval(arg, event, previous)) for arg in args)
    if op == "not":
        return not _truthy(_eval(args[0], event, previous))
    if op == "present":
        return args[0].lookup(event) is not _MISSING
    if op in ("changed", "delta"):
        now, before = args[0].lookup(event), args[0].lookup(previous)
        if op == "delta":
            return _difference(now, before)
        return now is not _MISSING and before is not _MISSING and _differs(now, before)
    left, right = _eval(args[0], event, previous), _eval(args[1], event, previous)
    if left is _MISSING or right is _MISSING:
        return False
    return _compare(op, left, right)

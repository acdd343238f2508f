"""What a condition reads, and whether the readings can answer it.

The condition language forgives on purpose: a missing field, a null or a
comparison of unlike types is simply false, so a sensor rule never crashes on
an odd event. That suits a rule, which *starts* something when it matches. It
does not suit an action's requirement, which *allows* something: over a
reading without ``level`` (or with ``"high"``, or null), ``not (tank.level >
90)`` is true, and the pump would run. :func:`unusable` names each field a
condition reads that the readings cannot answer, so the verifier refuses such
an action as missing instead of evaluating the condition.

What a field must hold follows from where it stands:

- compared with a number, a string or a boolean: a value of that kind (a
  finite number; a boolean is no number);
- compared with ``null``, or inside ``changed()``: any value, null too;
- compared with another field: both of one kind, number, text or boolean;
- on its own (``door.open``, ``not door.open``): a boolean;
- inside ``delta()``: a number; inside ``present()``: nothing at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.rules.expr import _MISSING, Condition, Node, Path, _number

NUMBER, TEXT, BOOLEAN = "a number", "text", "a boolean"
_ANY = "any value"
_COMPARABLE = "a number, text or a boolean"


def _kind(value: Any) -> str:
    """What ``value`` is, in the words of a refusal."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return BOOLEAN
    if _number(value) is not None:
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if isinstance(value, int | float):
        return "not a finite number"
    return "a list" if isinstance(value, list) else "an object"


def _literal_kind(node: Any) -> str:
    """The kind a field compared with ``node`` (not a field) must have."""
    if isinstance(node, Node):
        return NUMBER if node.op == "delta" else BOOLEAN
    return _ANY if node is None else _kind(node)


class _Reader:
    """Walks a condition's tree, noting each field the readings cannot answer."""

    def __init__(self, readings: Mapping[str, Any]) -> None:
        self.readings = readings
        self.problems: dict[str, str] = {}

    def field(self, path: Path, want: str) -> str | None:
        """The kind of ``path``'s value if it is ``want``; otherwise note why not."""
        value = path.lookup(self.readings)
        if value is _MISSING:
            self.problems.setdefault(str(path), "is missing")
            return None
        kind = _kind(value)
        if want == _ANY or kind == want or (want == _COMPARABLE
                                             and kind in (NUMBER, TEXT, BOOLEAN)):
            return kind
        self.problems.setdefault(str(path), f"is {kind}, not {want}")
        return None

    def walk(self, node: Any) -> None:
        """Note the problems of every field under ``node`` (a field here is a boolean)."""
        if isinstance(node, Path):
            self.field(node, BOOLEAN)
        elif not isinstance(node, Node) or node.op == "present":
            return
        elif node.op in ("and", "or", "not"):
            for arg in node.args:
                self.walk(arg)
        elif node.op in ("changed", "delta"):
            self.field(node.args[0], _ANY if node.op == "changed" else NUMBER)
        else:
            self.compare(*node.args)

    def compare(self, left: Any, right: Any) -> None:
        """A comparison: each field must hold what the other side is."""
        if isinstance(left, Path) and isinstance(right, Path):
            kinds = self.field(left, _COMPARABLE), self.field(right, _COMPARABLE)
            if None not in kinds and kinds[0] != kinds[1]:
                self.problems.setdefault(str(right), f"is {kinds[1]}, not {kinds[0]} "
                                                     f"like {left}")
            return
        for this, other in ((left, right), (right, left)):
            if isinstance(this, Path):
                self.field(this, _literal_kind(other))
            else:
                self.walk(this)


def unusable(condition: Condition, readings: Mapping[str, Any]) -> dict[str, str]:
    """Each field ``condition`` reads that ``readings`` cannot answer, with why.

    ``{"tank.level": "is text, not a number"}``; empty when every field is
    present and of a kind the condition can compare.
    """
    reader = _Reader(readings)
    reader.walk(condition.tree)
    return reader.problems

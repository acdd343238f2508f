"""The model's grammar-constrained decision: ``{"answer": "..."}`` or ``{"action", "args"}``.

:func:`argument_grammar` gives one argument's schema as llama.cpp's grammar
builder can enforce it (the registry assembles the decision's schema from
them). :class:`AnswerText` sits between the model and a request's outlets:
while the reply is an answer, it passes on the answer's text as it arrives
(JSON string escapes undone), so a plain answer still streams; an action
streams nothing. :func:`parse_decision` reads the finished reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Any

from appliance.llm.types import Chunk, OnChunk

MAX_RANGE = 1000
"""Most values a bounded argument takes in the grammar (each is one choice)."""
DECIMAL_DIGITS = 60
"""Digits of decimal arithmetic on argument values and steps (floats have at most 17)."""
_NOT_FOR_GRAMMAR = ("description", "default", "minimum", "maximum", "multipleOf")


def argument_values(spec: Mapping[str, Any], limit: int) -> list[int | float]:
    """The values of a bounded numeric argument, in order, at most ``limit`` of them.

    The multiples of its ``multipleOf`` step (1 for an integer without one)
    from ``minimum`` to ``maximum``, computed in decimal, so that a step of 0.1
    gives 21.3, not 21.299999999999997.
    """
    with localcontext(prec=DECIMAL_DIGITS):
        step = Decimal(str(spec.get("multipleOf", 1)))
        first = int((Decimal(str(spec["minimum"])) / step).to_integral_value(ROUND_CEILING))
        last = int((Decimal(str(spec["maximum"])) / step).to_integral_value(ROUND_FLOOR))
        values = [k * step for k in range(first, min(last, first + limit - 1) + 1)]
    return [int(v) if spec["type"] == "integer" else float(v) for v in values]


def argument_grammar(spec: Mapping[str, Any]) -> dict[str, Any]:
    """An argument's schema as llama.cpp's grammar builder can enforce it.

    The builder ignores numeric bounds and steps, so a range becomes the
    ``enum`` of its values: the integers, or the decimals at the declared
    ``multipleOf`` step ("set the heating to 21.5" with ``minimum: 5,
    maximum: 30, multipleOf: 0.5`` offers exactly 5.0, 5.5, ... 30.0). A number
    range without a step, or with more than :data:`MAX_RANGE` values, keeps its
    bare type: the verifier refuses what falls outside it.
    """
    bounded = "minimum" in spec and "maximum" in spec and "enum" not in spec and (
        spec["type"] == "integer" or "multipleOf" in spec)
    if bounded:
        values = list(argument_values(spec, MAX_RANGE + 1))
        if len(values) <= MAX_RANGE:
            return {"enum": values}
    return {k: v for k, v in spec.items() if k not in _NOT_FOR_GRAMMAR}

_ANSWER_START = re.compile(r'^\s*\{\s*"answer"\s*:\s*"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}


@dataclass(frozen=True)
class Decision:
    """What the model chose: ``answer`` text, or ``action`` with ``args``."""

    answer: str | None = None
    action: str | None = None
    args: dict[str, Any] | None = None


class AnswerText:
    """Wraps a stream: passes on only the text of an ``{"answer": "..."}`` reply."""

    def __init__(self, stream: OnChunk) -> None:
        self.stream = stream
        self._raw = ""
        self._at: int | None = None  # where the answer's text starts in the raw reply
        self._done = False
        self._seq = 0
        self.text = ""

    def __call__(self, chunk: Chunk) -> None:
        self._raw += chunk.delta
        if self._done:
            return
        if self._at is None:
            match = _ANSWER_START.match(self._raw)
            if match is None:
                if len(self._raw) > 24 or '"action"' in self._raw:
                    self._done = True  # an action, or not an answer: nothing to show
                return
            self._at = match.end()
        text, end = _unescape(self._raw, self._at)
        new = text[len(self.text):]
        self.text = text
        self._done = end
        if new:
            self.stream(Chunk(chunk.request_id, self._seq, new))
            self._seq += 1

    def restart(self) -> None:
        """A rerouted generation starts over."""
        self._raw, self._at, self._done, self.text = "", None, False, ""
        restart = getattr(self.stream, "restart", None)
        if restart is not None:
            restart()


def _unescape(raw: str, start: int) -> tuple[str, bool]:
    """The JSON string from ``start`` as far as it has come, and whether it is closed."""
    out: list[str] = []
    i = start
    while i < len(raw):
        ch = raw[i]
        if ch == '"':
            return "".join(out), True
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(raw):
            break  # the escape is not complete yet
        kind = raw[i + 1]
        if kind == "u":
            if i + 6 > len(raw):
                break
            try:
                out.append(chr(int(raw[i + 2:i + 6], 16)))
            except ValueError:
                out.append("\ufffd")
            i += 6
        else:
            out.append(_ESCAPES.get(kind, kind))
            i += 2
    return "".join(out), False


def parse_decision(text: str, streamed: str = "") -> Decision:
    """The decision in a finished reply; a reply cut short keeps whatever answer it had."""
    try:
        data = json.loads(text)
    except ValueError:
        return Decision(answer=streamed or None)
    if not isinstance(data, dict):
        return Decision(answer=streamed or None)
    if isinstance(data.get("answer"), str):
        return Decision(answer=data["answer"])
    if isinstance(data.get("action"), str):
        args = data.get("args")
        return Decision(action=data["action"], args=args if isinstance(args, dict) else {})
    return Decision(answer=streamed or None)

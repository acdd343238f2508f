"""Prompt templates for sensor rules: ``{field.path}`` placeholders filled with event values.

Values are inserted as *data*: numbers as numbers, text JSON-quoted and cut
short, anything structured (or a number out of the float range, NaN or an
infinity) replaced by a marker. A sensor payload can therefore never smuggle
instructions into the prompt as free text, and no JSON value makes rendering fail.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.rules.expr import ExpressionError, Path, parse_condition

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
MAX_TEXT_VALUE = 48
UNKNOWN = "unknown"


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            return UNKNOWN
        return f"{number:g}" if math.isfinite(number) else UNKNOWN
    if isinstance(value, str):
        printable = (ch for ch in value if ch.isprintable())  # also drops lone surrogates
        clean = "".join(itertools.islice(printable, MAX_TEXT_VALUE))
        return json.dumps(clean, ensure_ascii=False)
    return UNKNOWN


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template; call :meth:`render` with an event."""

    text: str
    fields: tuple[Path, ...]

    def render(self, event: Mapping[str, Any]) -> str:
        """The prompt for ``event``; missing fields read ``unknown``."""
        values = iter(self.fields)

        def fill(match: re.Match[str]) -> str:
            if match.group(0) in ("{{", "}}"):
                return match.group(0)[0]
            return _format(next(values).lookup(event))

        return _PLACEHOLDER.sub(fill, self.text)


def parse_template(text: str) -> PromptTemplate:
    """Parse ``text``; raises :class:`ExpressionError` for a placeholder that is not a path."""
    fields: list[Path] = []
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1)
        if name is None:
            continue
        tree = parse_condition(name).tree if name.strip() else None
        if not isinstance(tree, Path):
            raise ExpressionError(f"placeholder {{{name}}} is not a field path such as "
                                  "{temperature} or {sensor.temp}")
        fields.append(tree)
    unmatched = _PLACEHOLDER.sub("", text)
    if "{" in unmatched or "}" in unmatched:
        raise ExpressionError("unbalanced '{' or '}'; write {{ or }} for a literal brace")
    return PromptTemplate(text, tuple(fields))

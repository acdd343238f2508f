"""What a catalog entry says about a model that thinks before it answers.

A *thinking* model (Qwen3, DeepSeek-R1 distills...) writes a thought between
two markers, ``<think>`` and ``</think>``, and then its answer. The catalog
entry of such a model says so with a ``thinking:`` mapping::

    thinking:
      open: "<think>"           # the markers (these are the defaults)
      close: "</think>"
      template_opens: false     # true: the chat template already ends with the open marker
      off_switch: ""            # text that turns thinking off when appended to the
                                # question (Qwen3: "/no_think"); empty: an empty think
                                # block is written after the assistant header instead
      hand_over: "Considering the limited time by the user, ..."   # read, then the
                                # close marker, when the thought reaches its budget

How the engine uses it is in :mod:`appliance.llm.thought`. Every field is
checked when the catalog is loaded (:func:`parse_thinking`, one of the
catalog parser's field checks), so a bad entry is one line at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

QWEN_HAND_OVER = ("Considering the limited time by the user, I have to give the solution "
                  "based on the thinking directly now.")
"""The hand-over text of Qwen's own budget recipe (read before ``</think>``)."""

MAX_TEXT = 400
"""No marker, switch or hand-over text is longer than this (they are read every answer)."""


@dataclass(frozen=True)
class ThinkingSpec:
    """How one model thinks; see the module's docstring for each field."""

    open: str = "<think>"
    close: str = "</think>"
    template_opens: bool = False
    off_switch: str = ""
    hand_over: str = QWEN_HAND_OVER


_MAY_BE_EMPTY = ("off_switch", "hand_over")


def parse_thinking(value: Any) -> ThinkingSpec:
    """A catalog entry's ``thinking:`` mapping, checked; ``ValueError`` names the bad field."""
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping (open, close, template_opens, off_switch, "
                         f"hand_over), got {type(value).__name__}")
    known = {f.name for f in fields(ThinkingSpec)}
    checked: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise ValueError(f"{key}: unknown field; known: {', '.join(sorted(known))}")
        if key == "template_opens":
            if not isinstance(item, bool):
                raise ValueError(f"template_opens: expected true or false, got {item!r}")
        elif not isinstance(item, str) or (key not in _MAY_BE_EMPTY and not item.strip()):
            raise ValueError(f"{key}: expected text, got {item!r}")
        elif len(item) > MAX_TEXT or any(ord(c) < 32 and c != "\n" for c in item):
            raise ValueError(f"{key}: at most {MAX_TEXT} characters, without control "
                             "characters")
        checked[key] = item
    spec = ThinkingSpec(**checked)
    if spec.open.strip() == spec.close.strip():
        raise ValueError("open and close must be different markers")
    return spec

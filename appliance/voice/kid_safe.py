"""Toy mode: a children's system prompt and a sentence filter on the model's output."""

from __future__ import annotations

import re
from collections.abc import Iterable

KID_SYSTEM_PROMPT = (
    "You are a friendly toy talking with a young child. Use simple, kind words and at "
    "most two short sentences. Never talk about violence, weapons, drugs, alcohol, scary "
    "or adult topics, and never ask for names, addresses or secrets."
)
KID_MAX_TOKENS = 64
REFUSAL = "Let's talk about something else!"
BLOCKED = ("kill", "gun", "weapon", "blood", "drug", "alcohol", "beer", "wine", "sex",
           "naked", "die", "dead", "stupid", "hate", "address", "password")


class KidFilter:
    """Replaces every sentence that contains a blocked word with a friendly refusal."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        words = sorted({w.lower() for w in (*BLOCKED, *extra) if w.strip()})
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\w*\b",
                                   re.IGNORECASE)

    def sentence(self, text: str) -> str:
        """``text`` itself, or the refusal if it has a blocked word."""
        return REFUSAL if self._pattern.search(text) else text

"""Prompt-lookup drafts: guess the next tokens from where the last few tokens occurred before.

An answer that quotes its reference passage repeats runs of the prompt's
tokens. When the last ``n`` tokens (``n`` = ``max_ngram`` down to 1) occurred
earlier in the prompt or the answer, the tokens that followed that earlier
occurrence are a cheap guess of what comes next; the decoding loop verifies
the guess with the model in one batch (:mod:`appliance.llm.decode_loop`).

Unlike ``llama_cpp.LlamaPromptLookupDecoding``, which scans the whole history
with numpy at every token, this keeps an index from each n-gram to the place
after its latest occurrence, updated as tokens arrive: a lookup costs
``max_ngram`` dictionary reads whatever the prompt's length. The latest
occurrence is the one taken, so once an answer has started quoting, the
passage's own continuation is what gets proposed.
"""

from __future__ import annotations

from collections.abc import Iterable


class PromptLookup:
    """Drafts up to ``max_draft`` tokens from the latest earlier match of the last n-gram.

    Only n-grams of ``min_ngram`` tokens or more count: a single common token
    matches everywhere and predicts little. The draft's length follows how
    the last ones fared (:meth:`verified`): it grows by ``grow`` while drafts
    are taken whole and falls back to what was accepted when one misses, since
    verifying a long guess costs more than a short one on a CPU.

    >>> draft = PromptLookup(max_ngram=2, max_draft=3)
    >>> draft.start([5, 6, 7, 8, 9, 5, 6])
    >>> draft.propose(10)
    [7, 8, 9]
    """

    def __init__(self, max_ngram: int = 3, max_draft: int = 10, min_ngram: int = 3,
                 grow: int = 2) -> None:
        if min(max_ngram, max_draft, min_ngram, grow) < 1 or min_ngram > max_ngram:
            raise ValueError("max_ngram, max_draft, min_ngram and grow must be at least 1 "
                             "and min_ngram at most max_ngram")
        self.max_ngram = max_ngram
        self.max_draft = max_draft
        self.min_ngram = min_ngram
        self.grow = grow
        self._size = max_draft
        self._tokens: list[int] = []
        # _after[n - 1][ngram] = index of the token that followed ngram's latest occurrence
        self._after: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram)]

    def start(self, tokens: Iterable[int]) -> None:
        """Forget everything and index ``tokens`` (the prompt)."""
        self._tokens = []
        self._size = self.max_draft
        for index in self._after:
            index.clear()
        for token in tokens:
            self.push(token)

    def push(self, token: int) -> None:
        """Add the next token of the text."""
        tokens = self._tokens
        tokens.append(token)
        at = len(tokens) - 1
        for n in range(1, min(self.max_ngram, at) + 1):
            self._after[n - 1][tuple(tokens[at - n: at])] = at

    def propose(self, limit: int) -> list[int]:
        """Up to ``min(limit, max_draft)`` tokens that may follow; ``[]`` if nothing matches.

        The n-gram that ends the text is indexed only when its successor
        arrives, so a match is always an earlier occurrence, never itself.
        """
        tokens = self._tokens
        count = min(limit, self._size)
        if count < 1:
            return []
        for n in range(min(self.max_ngram, len(tokens)), self.min_ngram - 1, -1):
            at = self._after[n - 1].get(tuple(tokens[-n:]))
            if at is not None:
                return tokens[at: at + count]
        return []

    def verified(self, drafted: int, accepted: int) -> None:
        """The model kept ``accepted`` of the ``drafted`` tokens last proposed."""
        if accepted == drafted:
            self._size = min(self.max_draft, self._size + self.grow)
        else:
            self._size = max(1, accepted)

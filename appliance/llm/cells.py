"""What one sequence's KV cells hold: the bookkeeping of a sequence in a shared context.

Sequence 0 is the context's *home*: prompts are read there, by ``Llama`` itself
and by the prefix and conversation caches, and ``Llama``'s own bookkeeping
(``input_ids[:n_tokens]``, ``requires_eval``) describes it
(:class:`HomeCells`). An answer decoded beside others moves to a *lane*, a
sequence of its own that keeps its bookkeeping here (:class:`LaneCells`).
Both keep the same promise: :meth:`Cells.tokens` are exactly the tokens whose
KV cells the sequence holds, at positions 0, 1, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import llama_cpp

from appliance.llm import native


class Cells(Protocol):
    """One sequence's cells."""

    seq: int

    @property
    def n(self) -> int:
        """Tokens held."""

    def tokens(self) -> list[int]:
        """The tokens held, in order."""

    def added(self, tokens: Sequence[int], live: bool) -> None:
        """``tokens`` were decoded after those held; ``live``: the last one's logits are kept."""

    def keep(self, n: int) -> None:
        """Hold only the first ``n`` tokens."""

    def set_live(self, live: bool) -> None:
        """Whether the last decode's logits belong to the last token held."""


class HomeCells:
    """Sequence 0, as ``Llama``'s bookkeeping describes it."""

    seq = 0

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self._llm = llm

    @property
    def n(self) -> int:
        """Tokens held."""
        return self._llm.n_tokens

    def tokens(self) -> list[int]:
        """The tokens held, in order."""
        return self._llm.input_ids[: self._llm.n_tokens].tolist()

    def added(self, tokens: Sequence[int], live: bool) -> None:
        """``tokens`` were decoded after those held."""
        llm, n = self._llm, self._llm.n_tokens
        llm.input_ids[n: n + len(tokens)] = tokens
        native.set_n_tokens(llm, n + len(tokens))
        native.set_requires_eval(llm, not live)

    def keep(self, n: int) -> None:
        """Hold only the first ``n`` tokens."""
        native.drop_kv(self._llm, n, seq=0)
        native.set_n_tokens(self._llm, n)

    def set_live(self, live: bool) -> None:
        """Whether the last decode's logits belong to the last token held."""
        native.set_requires_eval(self._llm, not live)


class LaneCells:
    """A sequence of its own (``seq`` > 0), made from what the home sequence holds now."""

    def __init__(self, llm: llama_cpp.Llama, seq: int) -> None:
        self._llm = llm
        self.seq = seq
        native.drop_seq(llm, seq)
        native.copy_seq(llm, 0, seq)
        self._tokens = llm.input_ids[: llm.n_tokens].tolist()

    @property
    def n(self) -> int:
        """Tokens held."""
        return len(self._tokens)

    def tokens(self) -> list[int]:
        """The tokens held, in order."""
        return list(self._tokens)

    def added(self, tokens: Sequence[int], live: bool) -> None:
        """``tokens`` were decoded after those held."""
        self._tokens.extend(tokens)

    def keep(self, n: int) -> None:
        """Hold only the first ``n`` tokens."""
        native.drop_seq(self._llm, self.seq, n)
        del self._tokens[n:]

    def set_live(self, live: bool) -> None:
        """A lane is always decoded with its next token: nothing to note."""

    def home(self) -> None:
        """Move this lane to sequence 0 (which forgets what it held), and free the lane."""
        llm = self._llm
        native.drop_seq(llm, 0)
        native.copy_seq(llm, self.seq, 0)
        native.drop_seq(llm, self.seq)
        llm.input_ids[: self.n] = self._tokens
        native.set_n_tokens(llm, self.n)
        native.set_requires_eval(llm, True)

    def free(self) -> None:
        """Give the lane's cells back (those the home sequence shares stay)."""
        native.drop_seq(self._llm, self.seq)

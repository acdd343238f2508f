"""A thinking model's thought: kept apart from the answer, within a budget that heat shortens.

A model whose catalog entry has ``thinking:`` (:class:`~appliance.llm.thinking.ThinkingSpec`)
writes ``<think> ... </think>`` before its answer. The engine makes one
:class:`Thinker` per model, and for each request a :class:`ThoughtPlan`:

* **The prompt.** A request with a thinking budget ends its prompt with the
  opening marker (unless the chat template writes it itself), so whatever the
  model writes first is thought. A request without one ends it with an empty
  think block, ``<think>`` + two newlines + ``</think>`` (Qwen3's own ``enable_thinking=False``),
  or, if the catalog names a soft switch (Qwen3's ``/no_think``), the question
  ends with it; the model may then write an empty block of its own, which is
  closed at once.
* **The budget, in our own decode loop.** The :class:`Thought` takes every sampled
  token before the answer's decoder does. It counts the thought's tokens and, when
  they reach the budget without the closing marker, has the hand-over text and
  the closing marker read in one batch with the last token
  (:meth:`~appliance.llm.decode_loop.Generation.force`); the answer follows. A
  closing marker that comes earlier simply ends the thought. The budget is
  ``thinking_budget x share()``, read at every token: the thermal level's share
  (``thermal.levels[].thinking``) cuts a running thought at once.
* **Never the answer.** Thought tokens never reach the decoder, so they are
  never in the text, the streamed chunks, the speaker, a decision or the
  history; the :class:`~appliance.llm.types.Completion` carries them apart.
* **Grammars wait.** A grammar-constrained decision thinks first: the grammar is
  held off while the model thinks and applies from the closing marker on.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import llama_cpp

from appliance.catalog import CatalogEntry
from appliance.errors import ModelError
from appliance.llm import native
from appliance.llm.decode_loop import Generation
from appliance.llm.thinking import ThinkingSpec
from appliance.llm.types import ChatRequest, Completion

Share = Callable[[], float]
"""The live share of the thinking budget (1.0: all of it; 0: think no more)."""

State = Literal["thinking", "before", "answer"]
"""Where the next token goes: the thought; the thought if it opens one (else the
answer); the answer."""


def full_share() -> float:
    """The whole budget: no thermal cut."""
    return 1.0


class Thinker:
    """A model's markers and texts, tokenized once (with its special tokens)."""

    def __init__(self, llm: llama_cpp.Llama, spec: ThinkingSpec) -> None:
        def tokens(text: str) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

        self.spec, self.llm = spec, llm
        opened = "" if spec.template_opens else spec.open
        self.on_suffix = tokens(opened + "\n") if opened else []
        self.off_suffix = [] if self.soft_switch else tokens(
            (opened or "\n") + "\n" + spec.close + "\n\n")
        head = f"\n\n{spec.hand_over}\n" if spec.hand_over else "\n"
        self.hand_over = tokens(head + spec.close + "\n\n")
        self.empty_close = tokens("\n\n" + spec.close + "\n\n")
        self.open_ids = tokens(spec.open)
        if self.soft_switch and len(self.open_ids) != 1:
            raise ModelError(f"thinking.off_switch needs an opening marker that is one token "
                             f"of the model, and {spec.open!r} is {len(self.open_ids)}")

    @property
    def soft_switch(self) -> bool:
        """Thinking is turned off by text in the question, not by an empty block."""
        return bool(self.spec.off_switch) and not self.spec.template_opens

    @classmethod
    def of(cls, llm: llama_cpp.Llama, entry: CatalogEntry | None) -> Thinker | None:
        """The thinker of a model whose catalog entry says it thinks; ``None`` otherwise."""
        if entry is None or entry.thinking is None:
            return None
        return cls(llm, entry.thinking)


@dataclass(frozen=True)
class ThoughtPlan:
    """How one request's prompt treats thinking, and where its first token goes."""

    thinker: Thinker | None
    state: State
    budget: int = 0
    share: Share = full_share

    @classmethod
    def of(cls, thinker: Thinker | None, request: ChatRequest,
           share: Share = full_share) -> ThoughtPlan:
        """The plan for ``request``: it thinks if its budget at today's share is a token."""
        if thinker is None:
            return NO_THOUGHT
        if int(request.thinking_budget * share()) >= 1:
            return cls(thinker, "thinking", request.thinking_budget, share)
        return cls(thinker, "before" if thinker.soft_switch else "answer")

    def question(self, text: str) -> str:
        """The question as the prompt holds it (with the soft switch, when thinking is off)."""
        if self.thinker is None or self.state != "before":
            return text
        return f"{text} {self.thinker.spec.off_switch}"

    @property
    def suffix(self) -> list[int]:
        """Tokens after the assistant header: an open thought, or an empty block."""
        if self.thinker is None:
            return []
        return self.thinker.on_suffix if self.state == "thinking" else self.thinker.off_suffix

    def start(self, generation: Generation, room: int, answer_limit: int) -> Thought:
        """The thought of this generation; ``room``: context cells left after the prompt.

        The thought leaves the answer its ``answer_limit`` or half the room,
        whichever is less, and room for the hand-over.
        """
        return Thought(self, generation, room - min(answer_limit, room // 2) - 1)


NO_THOUGHT = ThoughtPlan(None, "answer")
"""The plan of a model that does not think."""


class Thought:
    """One answer's thought: :meth:`take` sees every sampled token before the decoder.

    ``room``: the most context cells the thought may take, hand-over included.
    ``used``: the context cells it took (its tokens and what was read to close it).
    """

    def __init__(self, plan: ThoughtPlan, generation: Generation, room: int) -> None:
        self.plan, self.state = plan, plan.state
        self._generation = generation
        thinker = plan.thinker
        self._cap = max(0, room - len(thinker.hand_over)) if thinker is not None else 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tokens: list[int] = []
        self._text = ""
        self._began: float | None = None
        self._ms = 0.0
        self.used = 0
        self.cut = False  # closed by the budget, not by the model
        generation.hold_grammar(self.state == "thinking")

    @property
    def limit(self) -> int:
        """The live budget: tokens this thought may have now."""
        return min(int(self.plan.budget * self.plan.share()), self._cap)

    def take(self, token: int) -> bool:
        """Whether ``token`` is thought (the decoder must not see it); closes it on budget."""
        if self.state == "answer":
            return False
        thinker = self.plan.thinker
        assert thinker is not None
        if self._began is None:
            self._began = time.monotonic()
        if self.state == "before":  # thinking is off: only an opening marker first is thought
            if token != thinker.open_ids[0]:
                self.state = "answer"
                return False
            self.used += 1
            self._close(thinker.empty_close)
            return True
        if llama_cpp.llama_vocab_is_eog(native.vocab(thinker.llm), token):
            self._end()  # the model stopped without an answer: the decoder ends it
            return False
        piece = thinker.llm.detokenize([token], prev_tokens=self._tokens, special=True)
        self._tokens.append(token)
        self.used += 1
        seen = len(self._text) - len(thinker.spec.close)
        self._text += self._utf8.decode(piece)
        at = self._text.find(thinker.spec.close, max(0, seen))
        if at >= 0:
            self._text = self._text[:at]
            self._end()
        elif len(self._tokens) >= self.limit:
            self.cut = True
            self._close(thinker.hand_over)
        return True

    def _close(self, forced: list[int]) -> None:
        """Read ``forced`` (hand-over, closing marker) in one batch; the answer follows."""
        self._generation.force(forced)
        self.used += len(forced)
        self._end()

    def _end(self) -> None:
        self.state = "answer"
        self._generation.hold_grammar(False)
        if self._began is not None:
            self._ms = (time.monotonic() - self._began) * 1000

    def into(self, completion: Completion) -> Completion:
        """``completion`` with this thought (its text, tokens and time) beside the answer."""
        if not self._tokens:
            return completion
        return replace(completion, thinking=self._text.strip(),
                       thinking_tokens=len(self._tokens), thinking_ms=self._ms)

"""Time to first token of a conversation's 4th turn, with the state the 3rd left, and without.

Each round has the model answer three turns (greedy), then the 4th twice: right
after the 3rd, with whatever state the engine kept (its live KV cache and its
prefix cache), and after another prompt has taken both, so that it reads the
whole history again. The two answers must be the same text.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.llm import ChatRequest, Completion, Engine
from appliance.llm.types import Turn

QUESTIONS = ("What is the greenhouse temperature today?",
             "And is that too hot for lettuce?",
             "What should I do about it this afternoon?",
             "How long until it cools down again?")
OTHER_PROMPT = "You are terse."
"""Another system prompt, read in between, so that no state of the conversation is live."""


@dataclass(frozen=True)
class ConversationBench:
    """Medians over the rounds; ``same_text``: every kept and scratch answer agreed."""

    history_tokens: int
    kept_ttft_ms: float
    scratch_ttft_ms: float
    kept_evaluated: int
    scratch_evaluated: int
    same_text: bool
    rounds: int

    @property
    def ratio(self) -> float:
        """The follow-up's first token with the kept state, as a share of from scratch."""
        return self.kept_ttft_ms / self.scratch_ttft_ms


def run_conversation_bench(model: ResolvedModel, *, rounds: int = 3,
                           max_tokens: int = 32) -> ConversationBench:
    """Answer :data:`QUESTIONS` ``rounds`` times; time the 4th with and without the kept state."""
    # One prefix state in memory: the other prompt read in between evicts the conversation's.
    engine = Engine(LlmSettings(model_path=model.path, temperature=0.0, max_tokens=max_tokens,
                                prefix_cache_entries=1), model)
    kept: list[Completion] = []
    scratch: list[Completion] = []
    same = True
    try:
        engine.warm_up()
        for _ in range(rounds):
            engine.warm_up(OTHER_PROMPT)
            history: tuple[Turn, ...] = ()
            for question in QUESTIONS[:3]:
                done = engine.complete(ChatRequest(question, history=history))
                history = (*history, Turn("user", question), Turn("assistant", done.text))
            last = ChatRequest(QUESTIONS[3], history=history)
            kept.append(engine.complete(last))
            engine.warm_up(OTHER_PROMPT)
            scratch.append(engine.complete(last))
            same = same and kept[-1].text == scratch[-1].text
    finally:
        engine.close()
    return ConversationBench(
        history_tokens=round(statistics.median(c.prompt_tokens for c in scratch)),
        kept_ttft_ms=statistics.median(c.ttft_ms for c in kept),
        scratch_ttft_ms=statistics.median(c.ttft_ms for c in scratch),
        kept_evaluated=round(statistics.median(c.evaluated_tokens for c in kept)),
        scratch_evaluated=round(statistics.median(c.evaluated_tokens for c in scratch)),
        same_text=same, rounds=rounds)


def report_conversation(r: ConversationBench) -> list[str]:
    """The figures as lines for a person."""
    verdict = "met" if r.ratio <= 0.25 and r.same_text else "NOT met"
    return [f"follow-up (4th turn, prompt of {r.history_tokens} tokens)   first token "
            f"with the kept state {r.kept_ttft_ms:7.1f} ms ({r.kept_evaluated} tokens read)   "
            f"from scratch {r.scratch_ttft_ms:7.1f} ms ({r.scratch_evaluated} read)",
            f"ratio {r.ratio:6.1%}   identical greedy text: {'yes' if r.same_text else 'NO'}"
            f"   target <= 25% with identical text: {verdict}   ({r.rounds} rounds)"]

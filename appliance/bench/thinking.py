"""What the thinking budget's machinery costs an answer that does not think.

A thinking model's every sampled token passes through its
:class:`~appliance.llm.thought.Thought` before the decoder sees it. That must
cost next to nothing when the request does not think (voice, by default). The
bench answers the same question with the engine's thinker removed (thinking
off entirely) and with a thinker and a budget of 0 (the machinery on, thinking
off), alternating the order each round, and compares the decode speed (tokens/s
after the first token). The target is at least 98 %.

The model need not think: one whose catalog entry has no ``thinking:`` is
given the default markers (:class:`~appliance.llm.thinking.ThinkingSpec`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.llm import ChatRequest, Engine
from appliance.llm.thinking import ThinkingSpec
from appliance.llm.thought import Thinker

QUESTION = "Write a long story about a greenhouse, its plants and the gardener who keeps it."
TARGET = 0.98


@dataclass(frozen=True)
class ThinkingBench:
    """Median decode speeds over the rounds, and the answers' median length."""

    off_tokens_per_s: float
    machinery_tokens_per_s: float
    tokens: int
    rounds: int

    @property
    def ratio(self) -> float:
        """The speed with the machinery on (thinking off), as a share of without it."""
        return self.machinery_tokens_per_s / self.off_tokens_per_s


def run_thinking_bench(model: ResolvedModel, *, rounds: int = 5,
                       max_tokens: int = 96) -> ThinkingBench:
    """Answer :data:`QUESTION` ``rounds`` times each way; the medians."""
    engine = Engine(LlmSettings(model_path=model.path, temperature=0.0, max_tokens=max_tokens),
                    model)
    spec = model.entry.thinking if model.entry is not None else None
    machinery = Thinker(engine.llama, spec or ThinkingSpec())
    speeds: dict[bool, list[float]] = {False: [], True: []}
    lengths: list[int] = []
    try:
        engine.warm_up()
        for i in range(rounds):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                engine.thinker = machinery if on else None
                done = engine.complete(ChatRequest(QUESTION, thinking_budget=0))
                speeds[on].append(done.tokens_per_s)
                lengths.append(done.tokens)
    finally:
        engine.close()
    return ThinkingBench(off_tokens_per_s=statistics.median(speeds[False]),
                         machinery_tokens_per_s=statistics.median(speeds[True]),
                         tokens=round(statistics.median(lengths)), rounds=rounds)


def report_thinking(r: ThinkingBench) -> list[str]:
    """The figures as lines for a person."""
    verdict = "met" if r.ratio >= TARGET else "NOT met"
    return [f"thinking budget overhead ({r.tokens}-token answers, thinking off)   machinery on "
            f"{r.machinery_tokens_per_s:6.2f} tok/s   off entirely {r.off_tokens_per_s:6.2f} "
            f"tok/s",
            f"ratio {r.ratio:6.1%}   target >= {TARGET:.0%}: {verdict}   ({r.rounds} rounds)"]

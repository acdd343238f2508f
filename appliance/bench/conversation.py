"""Time to first token of a conversation's 4th turn, with the state the 3rd left, and without.

Each round has the model answer three turns (greedy), then the 4th three times:
right after the 3rd, with the state the engine kept in its context; after
another conversation took the context, from the state kept on disk; and after
another prompt has taken both (and the disk is emptied), so that it reads the
whole history again. The two answers must be the same text.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.llm import ChatRequest, Completion, Engine
from appliance.llm.kv_disk import DiskKvCache, model_identity
from appliance.llm.types import Turn

QUESTIONS = ("What is the greenhouse temperature today?",
             "And is that too hot for lettuce?",
             "What should I do about it this afternoon?",
             "How long until it cools down again?")
OTHER_QUESTION = "Tell me a joke about robots."
"""Another conversation's question, which takes the context (its state goes to disk)."""
OTHER_PROMPT = "You are terse."
"""Another system prompt, read in between, so that no state of the conversation is live."""


@dataclass(frozen=True)
class ConversationBench:
    """Medians over the rounds; ``same_text``: every kept and scratch answer agreed."""

    history_tokens: int
    kept_ttft_ms: float
    disk_ttft_ms: float
    scratch_ttft_ms: float
    kept_evaluated: int
    disk_evaluated: int
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
    kept: list[Completion] = []
    disk: list[Completion] = []
    scratch: list[Completion] = []
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        states = DiskKvCache(Path(tmp), 1 << 30, model_identity(model.path))
        # One prefix state in memory: the other prompt read in between evicts the conversation's.
        engine = Engine(LlmSettings(model_path=model.path, temperature=0.0,
                                    max_tokens=max_tokens, prefix_cache_entries=1), model,
                        conversation_cache=states)
        try:
            engine.warm_up()
            for _ in range(rounds):
                last = _three_turns(engine)
                kept.append(engine.complete(last))
                last = _three_turns(engine)
                engine.complete(ChatRequest(OTHER_QUESTION, keep_state=True))  # evicts it
                _written(states)
                disk.append(engine.complete(last))
                for state in states.directory.glob("*.kv"):
                    state.unlink()
                engine.warm_up(OTHER_PROMPT)
                scratch.append(engine.complete(replace(last, keep_state=False)))
                same = same and kept[-1].text == disk[-1].text == scratch[-1].text
        finally:
            engine.close()
    return ConversationBench(
        history_tokens=round(statistics.median(c.prompt_tokens for c in scratch)),
        kept_ttft_ms=statistics.median(c.ttft_ms for c in kept),
        disk_ttft_ms=statistics.median(c.ttft_ms for c in disk),
        scratch_ttft_ms=statistics.median(c.ttft_ms for c in scratch),
        kept_evaluated=round(statistics.median(c.evaluated_tokens for c in kept)),
        disk_evaluated=round(statistics.median(c.evaluated_tokens for c in disk)),
        scratch_evaluated=round(statistics.median(c.evaluated_tokens for c in scratch)),
        same_text=same, rounds=rounds)


def _written(states: DiskKvCache, timeout_s: float = 60.0) -> None:
    """Wait for the background write of the evicted conversation's state."""
    deadline = time.monotonic() + timeout_s
    while not list(states.directory.glob("*.kv")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no conversation state was written within {timeout_s:g} s")
        time.sleep(0.01)


def _three_turns(engine: Engine) -> ChatRequest:
    """Answer the first three questions as one conversation; the 4th's request."""
    engine.warm_up(OTHER_PROMPT)
    history: tuple[Turn, ...] = ()
    for question in QUESTIONS[:3]:
        done = engine.complete(ChatRequest(question, history=history, keep_state=True))
        history = (*history, Turn("user", question), Turn("assistant", done.text))
    return ChatRequest(QUESTIONS[3], history=history, keep_state=True)


def report_conversation(r: ConversationBench) -> list[str]:
    """The figures as lines for a person."""
    verdict = "met" if r.ratio <= 0.25 and r.same_text else "NOT met"
    return [f"follow-up (4th turn, prompt of {r.history_tokens} tokens)   first token "
            f"with the kept state {r.kept_ttft_ms:7.1f} ms ({r.kept_evaluated} tokens read)   "
            f"from scratch {r.scratch_ttft_ms:7.1f} ms ({r.scratch_evaluated} read)",
            f"after another conversation, from the state kept on disk {r.disk_ttft_ms:7.1f} ms "
            f"({r.disk_evaluated} read, {r.disk_ttft_ms / r.scratch_ttft_ms:6.1%} of scratch)",
            f"ratio {r.ratio:6.1%}   identical greedy text: {'yes' if r.same_text else 'NO'}"
            f"   target <= 25% with identical text: {verdict}   ({r.rounds} rounds)"]

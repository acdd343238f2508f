"""``appliance bench llm``: our engine against bare llama-cpp-python, same model and threads.

Two figures, each a ratio against the baseline measured in the same process:

* generation speed: tokens/s of :meth:`Engine.complete` over tokens/s of
  ``Llama.create_chat_completion(stream=True)`` for the same prompts (target >= 97 %);
* time to first token after a ~300-token system prompt: ours with the prefix
  cache over bare llama-cpp-python evaluating the whole prompt (target <= 30 %).

Both sides decode greedily, time from their first to their last streamed
piece, and alternate who goes first in each round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.llm import ChatRequest, Engine

QUESTIONS = (
    "What is two plus two?",
    "Give me one tip for watering tomatoes.",
    "Why is the sky blue?",
    "Name three animals that live on farms.",
    "How do I make a cup of tea?",
)

_POLICY = (
    "You run on a kiosk in a public garden centre. Visitors ask about plants, opening hours, "
    "watering, tools and the weather. Answer kindly and briefly, in plain words, without "
    "lists or markdown. Never invent prices or stock levels; say that staff at the till can "
    "help. If a question is about safety, such as chemicals, sharp tools or heat, tell the "
    "visitor to ask a member of staff. "
)


@dataclass(frozen=True)
class Timing:
    """One streamed answer: when it started, its first and last piece, and how many pieces."""

    started: float
    first: float
    last: float
    pieces: int

    @property
    def ttft_ms(self) -> float:
        """Milliseconds to the first piece."""
        return (self.first - self.started) * 1000

    @property
    def rate(self) -> float:
        """Pieces per second after the first (one piece per token but for split characters)."""
        return (self.pieces - 1) / (self.last - self.first) if self.pieces > 1 else 0.0


def _timed(pieces: Callable[[Callable[[], None]], None]) -> Timing:
    """Run ``pieces(tick)``, which calls ``tick()`` for every streamed piece of text."""
    marks: list[float] = []
    started = time.perf_counter()
    pieces(lambda: marks.append(time.perf_counter()))
    if not marks:
        return Timing(started, started, started, 0)
    return Timing(started, marks[0], marks[-1], len(marks))


def _bare(engine: Engine, system: str, question: str, max_tokens: int, *, reset: bool,
          ) -> Timing:
    llm, s = engine.llama, engine.settings

    def run(tick: Callable[[], None]) -> None:
        if reset:
            llm.reset()
        stream = llm.create_chat_completion(
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": question}],
            temperature=0.0, top_p=s.top_p, top_k=s.top_k, seed=s.seed,
            max_tokens=max_tokens, stream=True)
        for part in stream:
            if part["choices"][0]["delta"].get("content"):  # type: ignore[index,union-attr]
                tick()

    return _timed(run)


def _ours(engine: Engine, system: str, question: str, max_tokens: int) -> Timing:
    def run(tick: Callable[[], None]) -> None:
        engine.complete(ChatRequest(question, max_tokens=max_tokens, system_prompt=system),
                        on_chunk=lambda _chunk: tick())

    return _timed(run)


def long_system_prompt(engine: Engine, tokens: int = 300) -> str:
    """A realistic kiosk policy of at least ``tokens`` tokens."""
    text = _POLICY
    while len(engine.llama.tokenize(text.encode(), add_bos=False)) < tokens:
        text += _POLICY
    return text.strip()


@dataclass(frozen=True)
class LlmBench:
    """The figures of one benchmark run."""

    ours_tps: float
    bare_tps: float
    cached_ttft_ms: float
    uncached_ttft_ms: float
    system_tokens: int

    @property
    def speed_ratio(self) -> float:
        """Our generation speed over bare llama-cpp-python's."""
        return self.ours_tps / self.bare_tps

    @property
    def ttft_ratio(self) -> float:
        """Cached time to first token over uncached."""
        return self.cached_ttft_ms / self.uncached_ttft_ms


def run_llm_bench(engine: Engine, rounds: int = 3, max_tokens: int = 96,
                  questions: Iterable[str] = QUESTIONS) -> LlmBench:
    """Measure both figures on ``engine``; greedy decoding on both sides."""
    questions = tuple(questions)
    short = engine.settings.system_prompt
    ours: list[float] = []
    bare: list[float] = []
    for r in range(rounds):
        for q in questions:
            pair = [lambda q=q: _bare(engine, short, q, max_tokens, reset=False),
                    lambda q=q: _ours(engine, short, q, max_tokens)]
            first, second = pair if r % 2 == 0 else pair[::-1]
            a, b = first(), second()
            bare_t, ours_t = (a, b) if r % 2 == 0 else (b, a)
            bare.append(bare_t.rate)
            ours.append(ours_t.rate)
    system = long_system_prompt(engine)
    engine.warm_up(system)
    cached: list[float] = []
    uncached: list[float] = []
    for _ in range(rounds):
        for q in questions:
            uncached.append(_bare(engine, system, q, 1, reset=True).ttft_ms)
            cached.append(_ours(engine, system, q, 1).ttft_ms)
    return LlmBench(
        ours_tps=statistics.median(ours), bare_tps=statistics.median(bare),
        cached_ttft_ms=statistics.median(cached), uncached_ttft_ms=statistics.median(uncached),
        system_tokens=len(engine.llama.tokenize(system.encode(), add_bos=False)),
    )

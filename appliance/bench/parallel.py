"""Several requests decoded together (``llm.parallel``) against the same requests one by one.

In one run, with the same model, threads and questions (greedy):

* **one after another**: an engine with ``parallel: 1`` (today's) answers the
  questions in turn; the last one's first token waits for every answer before it;
* **together**: an engine with ``parallel`` = the number of questions answers them
  all at once; the same tokens, in fewer decode steps;
* **alone**: one question on each engine, for the cost of the lanes themselves;
* **per step**: what one decode step costs with 1, 2, 4 and 8 sequences in it,
  and how much of that is llama.cpp's ``llama_decode`` (the rest is ours: the
  batch, sampling, detokenizing, streaming).

On this x86 machine a step is bound by compute, so a batch of 4 costs several
times one token. On a Pi 5 with a 3B model it is bound by memory bandwidth and
costs about what one token costs; :attr:`ParallelBench.memory_bound` is the
aggregate speed-up these same steps would give there: ``k`` tokens per step, at
the cost of one token's decode plus our own overhead for ``k``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from functools import partial

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.llm import ChatRequest, Completion, Engine
from appliance.llm.together import Outcome

QUESTIONS = ("Tell me about cats.", "What is the moon made of?", "How is bread made?",
             "Why do rivers flow to the sea?", "What do bees eat?", "How do trains work?",
             "Why is the sky blue?", "What is a volcano?")
STEP_SIZES = (1, 2, 4, 8)
TIMED_STEPS = 24


@dataclass(frozen=True)
class ParallelBench:
    """The figures of one run; times in seconds unless named ``_ms``."""

    requests: int
    threads: int
    sequential_s: float
    sequential_tokens: int
    together_s: float
    together_tokens: int
    last_first_sequential_ms: float
    last_first_together_ms: float
    alone_today_tps: float
    alone_lanes_tps: float
    step_ms: dict[int, float]
    decode_ms: dict[int, float]
    same_text: int

    @property
    def speedup(self) -> float:
        """Aggregate tokens/s together, against one after another."""
        return (self.together_tokens / self.together_s) / (
            self.sequential_tokens / self.sequential_s)

    @property
    def last_first(self) -> float:
        """The last request's first token together, as a share of one after another."""
        return self.last_first_together_ms / self.last_first_sequential_ms

    @property
    def alone(self) -> float:
        """One request alone in a lane, against today's engine."""
        return self.alone_lanes_tps / self.alone_today_tps

    def memory_bound(self, k: int) -> float:
        """Tokens/s with ``k`` sequences where a decode of ``k`` costs a decode of one."""
        ours = self.step_ms[k] - self.decode_ms[k]
        return k * self.step_ms[1] / (self.decode_ms[1] + ours)


def run_parallel_bench(model: ResolvedModel, settings: LlmSettings, *, requests: int = 4,
                       max_tokens: int = 64, rounds: int = 5) -> ParallelBench:
    """Answer ``requests`` questions one after another, then together; time each step size.

    Both engines stay loaded (the weights are mapped once), so that a single
    request, the questions one after another and the questions together are
    measured in alternation, ``rounds`` times, the best of each.
    """
    base = replace(settings, temperature=0.0, max_tokens=max_tokens, parallel=1,
                   adaptive_threads=False)  # the lanes are measured, not the governor
    asks = [ChatRequest(q, id=f"q{i}") for i, q in enumerate(QUESTIONS[:requests])]
    today = Engine(base, model)
    lanes = Engine(replace(base, parallel=max(requests, *STEP_SIZES)), model)
    try:
        today.warm_up()
        lanes.warm_up()
        alone_today, alone_lanes = 0.0, 0.0
        sequential_s, together_s = float("inf"), float("inf")
        for _ in range(rounds):  # interleaved, the best of each: noise only slows
            alone_today = max(alone_today, today.complete(asks[0]).tokens_per_s)
            alone_lanes = max(alone_lanes, lanes.complete(asks[0]).tokens_per_s)
            started = time.monotonic()
            this_sequential = [today.complete(r) for r in asks]
            if (elapsed := time.monotonic() - started) < sequential_s:
                sequential_s, sequential = elapsed, this_sequential
            started = time.monotonic()
            this_together = _together(lanes, asks)
            if (elapsed := time.monotonic() - started) < together_s:
                together_s, together = elapsed, this_together
        # The last one's first token: every answer before it, then its own wait.
        last_first_seq = sum(c.total_ms for c in sequential[:-1]) + sequential[-1].ttft_ms
        step_ms, decode_ms = _step_costs(lanes)
    finally:
        today.close()
        lanes.close()
    return ParallelBench(
        requests=requests, threads=lanes.threads[0], sequential_s=sequential_s,
        sequential_tokens=sum(c.tokens for c in sequential), together_s=together_s,
        together_tokens=sum(c.tokens for c in together),
        last_first_sequential_ms=last_first_seq,
        last_first_together_ms=max(c.ttft_ms for c in together),
        alone_today_tps=alone_today, alone_lanes_tps=alone_lanes,
        step_ms=step_ms, decode_ms=decode_ms,
        same_text=sum(a.text == b.text for a, b in zip(sequential, together, strict=True)))


def _together(engine: Engine, asks: list[ChatRequest]) -> list[Completion]:
    together = engine.together
    assert together is not None
    outcomes: dict[str, Outcome] = {}
    for ask in asks:
        together.submit(ask, partial(outcomes.__setitem__, ask.id))
    while together.busy:
        together.step()
    done = [outcomes[a.id] for a in asks]
    for outcome in done:
        if not isinstance(outcome, Completion):
            raise outcome
    return done  # type: ignore[return-value]


def _step_costs(engine: Engine) -> tuple[dict[int, float], dict[int, float]]:
    """Median ms of one step with k sequences, and of the ``llama_decode`` within it."""
    steps: dict[int, float] = {}
    decodes: dict[int, float] = {}
    together = engine.together
    assert together is not None
    lanes = together.lanes
    for k in STEP_SIZES:
        outcomes: dict[str, Outcome] = {}
        for i in range(k):
            together.submit(ChatRequest(QUESTIONS[i], id=f"s{i}", max_tokens=4 * TIMED_STEPS),
                            partial(outcomes.__setitem__, f"s{i}"))
        while len(lanes) < k and together.busy:
            together.step()
        times, decoded = [], []
        for _ in range(TIMED_STEPS):
            started = time.perf_counter()
            together.step()
            times.append(time.perf_counter() - started)
            decoded.append(lanes.decode_s)
        while together.busy:
            together.step()
        steps[k] = statistics.median(times) * 1000
        decodes[k] = statistics.median(decoded) * 1000
    return steps, decodes


def report_parallel(r: ParallelBench) -> list[str]:
    """The figures as lines for a person, with the issue's targets."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [
        f"{r.requests} requests, {r.threads} decode thread(s), greedy; "
        f"identical texts {r.same_text}/{r.requests}",
        f"one after another: {r.sequential_tokens} tokens in {r.sequential_s:6.2f} s "
        f"({r.sequential_tokens / r.sequential_s:6.1f} tok/s)",
        f"together:          {r.together_tokens} tokens in {r.together_s:6.2f} s "
        f"({r.together_tokens / r.together_s:6.1f} tok/s)",
        f"aggregate speed-up {r.speedup:5.2f}x   target >= 1.15x: {verdict(r.speedup >= 1.15)}",
        f"last request's first token: {r.last_first_together_ms:7.0f} ms together, "
        f"{r.last_first_sequential_ms:7.0f} ms one after another ({r.last_first:6.1%})   "
        f"target <= 60%: {verdict(r.last_first <= 0.60)}",
        f"one request alone: {r.alone_lanes_tps:6.1f} tok/s in a lane, "
        f"{r.alone_today_tps:6.1f} today ({r.alone:6.1%})   target >= 97%: "
        f"{verdict(r.alone >= 0.97)}",
        "sequences per step   step ms   llama_decode ms   ours ms   speed-up here   "
        "memory-bound (Pi 5, 3B)",
    ]
    for k in STEP_SIZES:
        here = k * r.step_ms[1] / r.step_ms[k]
        lines.append(f"{k:>18}   {r.step_ms[k]:7.2f}   {r.decode_ms[k]:15.2f}   "
                     f"{r.step_ms[k] - r.decode_ms[k]:7.2f}   {here:12.2f}x   "
                     f"{r.memory_bound(k):10.2f}x")
    return lines

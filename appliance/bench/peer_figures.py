"""What ``appliance bench peers`` measures on each server, and how it is summed up.

Kept apart from the servers and the client so that every figure is a pure function of
what the client saw: the tests check them on made-up streams, with no server running.

* An answer is a :class:`Stream`, read line by line by :class:`StreamParser`: time to
  first token (request sent to first content delta), tokens/s from the first delta to
  the last, the whole stream's time.
* Requests sent at once make a :class:`Wave`: its rate is tokens over the wall time
  from the first request sent to the last answer's end (:func:`aggregate_rate`), and
  its streams give the p95 first token.
* A server's :class:`PeerFigures` add resident memory and the CPU time it spent per
  generated token while measured; :func:`rows` names the report's rows, and
  :func:`ratio` and :func:`ahead` say whether ours/theirs puts us ahead.

A token count is the server's ``usage.completion_tokens`` where it sends one, else its
content deltas (one per token in llama-cpp-python).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stream:
    """One streamed answer as the client saw it (``perf_counter`` seconds)."""

    sent: float
    first: float | None
    last: float
    tokens: int
    text: str
    finish: str | None = None

    @property
    def ttft_ms(self) -> float:
        """From the request sent to the first content delta."""
        return ((self.first if self.first is not None else self.last) - self.sent) * 1000

    @property
    def total_s(self) -> float:
        """From the request sent to the last line."""
        return self.last - self.sent

    @property
    def tokens_per_s(self) -> float:
        """Generation speed: tokens after the first over the time after the first."""
        span = self.last - self.first if self.first is not None else 0.0
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


@dataclass
class StreamParser:
    """Reads one OpenAI SSE stream: content deltas, the usage line, the finish reason."""

    sent: float
    first: float | None = None
    last: float = 0.0
    deltas: int = 0
    usage: int | None = None
    finish: str | None = None
    parts: list[str] = field(default_factory=list)

    def line(self, raw: bytes | str, now: float) -> None:
        """Take one line of the stream, received at ``now``."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        text = text.strip()
        if not text.startswith("data:"):
            return
        payload = text[5:].strip()
        self.last = now
        if payload == "[DONE]":
            return
        chunk = json.loads(payload)
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.first = now if self.first is None else self.first
                self.deltas += 1
                self.parts.append(content)
            self.finish = choice.get("finish_reason") or self.finish
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.usage = int(usage["completion_tokens"])

    def done(self) -> Stream:
        """The answer: tokens by the server's usage if it sent one, else its deltas."""
        tokens = self.usage if self.usage is not None else self.deltas
        return Stream(self.sent, self.first, self.last or self.sent, tokens,
                      "".join(self.parts), self.finish)


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Wave:
    """``len(streams)`` requests sent at once."""

    streams: tuple[Stream, ...]

    @property
    def wall_s(self) -> float:
        return max(s.last for s in self.streams) - min(s.sent for s in self.streams)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)


def aggregate_rate(waves: Iterable[Wave]) -> float:
    """Tokens per second of wall time over the waves, each wave timed from send to last end."""
    found = list(waves)
    wall = sum(w.wall_s for w in found)
    return sum(w.tokens for w in found) / wall if wall > 0 else 0.0


@dataclass(frozen=True)
class Row:
    """One figure of the report: its key, label, unit, and which way is better."""

    key: str
    label: str
    unit: str
    higher_wins: bool
    ratio: bool = True


def rows(clients: Sequence[int]) -> tuple[Row, ...]:
    """The report's rows for the given concurrency levels (1 client: the fresh questions)."""
    found = [Row("ttft_p50", "first token p50, fresh question", "ms", False),
             Row("ttft_p95", "first token p95, fresh question", "ms", False),
             Row("rate", "generation, one stream, p50", "tok/s", True),
             Row("total", "one stream's total time, p50", "s", False),
             Row("followup_p50", "follow-up first token p50", "ms", False)]
    for n in clients:
        found += [Row(f"agg_{n}", f"{n} client{'s' * (n > 1)}: aggregate", "tok/s", True),
                  Row(f"ttft95_{n}", f"{n} client{'s' * (n > 1)}: first token p95", "ms",
                      False)]
    found += [Row("rss", "resident memory", "MB", False),
              Row("cpu_ms_per_token", "CPU time per generated token", "ms", False),
              Row("tokens", "tokens per answer, mean", "", False, ratio=False),
              Row("short", "answers shorter than max_tokens", "", False, ratio=False)]
    return tuple(found)


@dataclass
class PeerFigures:
    """Everything measured on one server."""

    name: str
    fresh: list[Stream] = field(default_factory=list)
    followups: list[Stream] = field(default_factory=list)
    waves: dict[int, list[Wave]] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    worker: list[tuple[float, float]] = field(default_factory=list)
    """Ours: the worker's own (first token ms, tok/s) of each fresh question, from its log."""
    ready_s: float = 0.0
    """From starting the server to its model answering (all start together)."""

    def figures(self, clients: Sequence[int], max_tokens: int) -> dict[str, float]:
        """The row values (see :func:`rows`); nan where nothing was measured."""
        fresh = self.fresh
        every = [*fresh, *self.followups, *(s for ws in self.waves.values() for w in ws
                                            for s in w.streams)]
        tokens = sum(s.tokens for s in every)
        out = {"ttft_p50": percentile([s.ttft_ms for s in fresh], 50),
               "ttft_p95": percentile([s.ttft_ms for s in fresh], 95),
               "rate": percentile([s.tokens_per_s for s in fresh], 50),
               "total": percentile([s.total_s for s in fresh], 50),
               "followup_p50": percentile([s.ttft_ms for s in self.followups], 50),
               "rss": sum(self.rss.values()) / 1e6,
               "cpu_ms_per_token": self.cpu_s * 1000 / tokens if tokens else math.nan,
               "tokens": tokens / len(every) if every else math.nan,
               "short": float(sum(s.tokens < max_tokens for s in every))}
        for n in clients:
            # One client is the fresh questions, each a wave of its own.
            waves = [Wave((s,)) for s in fresh] if n == 1 else self.waves.get(n, [])
            out[f"agg_{n}"] = aggregate_rate(waves) if waves else math.nan
            out[f"ttft95_{n}"] = percentile([s.ttft_ms for w in waves for s in w.streams], 95)
        return out


def ratio(ours: float, theirs: float) -> float:
    """Our figure over theirs; nan when either is missing or theirs is 0."""
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan
    return ours / theirs


def ahead(value: float, higher_wins: bool) -> bool | None:
    """Whether a ratio ours/theirs means we are ahead (a tie counts as ahead); None if nan."""
    if math.isnan(value):
        return None
    return value >= 1.0 if higher_wins else value <= 1.0

"""The HTTP and Wyoming fuzz run: hostile cases from both servers, valid requests between them.

:func:`run_server_fuzz` sends the cases of :mod:`~appliance.bench.fuzz_http`
and :mod:`~appliance.bench.fuzz_wyoming`, shuffled together, a bounded number
at a time, one connection each, with a well-behaved request after every
``valid_every`` of them, and tallies per category whether each got what its
contract says (:mod:`~appliance.bench.fuzz_exchange`). Every valid request
must be answered. The service's memory (``rss``: the app and its worker) is
taken after a warm-up and at the end.

Two brakes keep a broken server from taking the machine down with it: a
category that has failed ``give_up_after`` times sends no more of its cases
(they count as failed, "skipped"), and the run stops when the service grows by
``rss_ceiling`` bytes or stops answering (``2 * concurrency`` cases in a row
got nothing before their deadline). Either way the result says so, and the run fails.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.bench.fuzz_bodies import chat_body
from appliance.bench.fuzz_exchange import (
    EventReader,
    RawConnection,
    Response,
    Silence,
    exchange_http,
    exchange_wyoming,
    fetch_http,
)
from appliance.bench.fuzz_http import HttpCase, http_cases, request
from appliance.bench.fuzz_wyoming import WyomingCase, valid_wyoming, wyoming_cases

HTTP_SHARE = 0.6
"""Of the hostile cases, this share is HTTP, the rest Wyoming."""
VALID_TIMEOUT_S = 180.0


@dataclass
class Tally:
    """How one category went: sent, passed, and why the first few failed."""

    sent: int = 0
    passed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Cases that did not get what the contract says (skipped ones too)."""
        return self.sent - self.passed


@dataclass(frozen=True)
class ServerFuzzResult:
    """One run: tallies by category (``http: ...``, ``wyoming: ...``), valid requests, memory."""

    tallies: dict[str, Tally]
    valid_asked: int
    valid_answered: int
    valid_failures: list[str]
    seconds: float
    rss_growth: int
    aborted: str | None

    @property
    def sent(self) -> int:
        """Hostile cases sent (or skipped)."""
        return sum(t.sent for t in self.tallies.values())

    @property
    def passed(self) -> int:
        """Hostile cases that got exactly their one error."""
        return sum(t.passed for t in self.tallies.values())

    def failing(self) -> dict[str, list[str]]:
        """The categories with a failed case, with their first reasons."""
        return {k: t.failures for k, t in sorted(self.tallies.items()) if t.failed}


@dataclass(frozen=True)
class Valid:
    """A well-behaved request: HTTP ``raw`` bytes, or a Wyoming stream ending in ``final``."""

    kind: str
    raw: bytes
    final: str = ""


def valid_requests(host: str, model: str, *, asr: bool, tts: bool) -> list[Valid]:
    """One of each kind of valid request (the run cycles through them)."""
    json_type = (("Content-Type", "application/json; charset=utf-8"),)
    listing_host = "localhost:" + host.rsplit(":", 1)[-1]
    out = [
        Valid("http: ollama chat", request("POST", "/api/chat", host, _body("/api/chat", model))),
        Valid("http: ollama chat stream", request("POST", "/api/chat", host, _body(
            "/api/chat", model, stream=True), json_type)),
        Valid("http: ollama generate", request("POST", "/api/generate", host, _body(
            "/api/generate", model))),
        Valid("http: openai chat", request("POST", "/v1/chat/completions", host, _body(
            "/v1/chat/completions", model))),
        Valid("http: openai chat stream", request("POST", "/v1/chat/completions", host, _body(
            "/v1/chat/completions", model, stream=True))),
        Valid("http: ollama chat gzip", request("POST", "/api/chat", host, gzip.compress(
            _body("/api/chat", model)), (("Content-Encoding", "gzip"),))),
        Valid("http: listing", request("GET", "/api/tags", listing_host)),
        Valid("http: openai models", request("GET", "/v1/models", host)),
    ]
    kinds = ["describe", "ping", *(["synthesize"] if tts else []),
             *(["transcribe"] if asr else []), "transcript"]
    for kind in kinds:
        raw, final = valid_wyoming(kind, "Reply with one word: yes.")
        out.append(Valid(f"wyoming: {kind}", raw, final))
    return out


def _body(path: str, model: str, **extra: object) -> bytes:
    return json.dumps(chat_body(path, model, "Say hi.", 4, **extra)).encode()


def _check_http(kind: str, response: Response) -> str | None:
    if response.status != 200:
        return f"{kind}: status {response.status}: {response.body[:100]!r}"
    if kind.endswith("stream"):
        lines = [line for line in response.body.split(b"\n") if line.strip()]
        done = lines[-1] == b"data: [DONE]" if "openai" in kind else (
            json.loads(lines[-1]).get("done") is True if lines else False)
        return None if done else f"{kind}: the stream did not end: {response.body[-100:]!r}"
    body = response.json()
    wanted = {"http: listing": "models", "http: openai models": "data",
              "http: ollama generate": "response", "http: openai chat": "choices"}.get(
        kind, "message")
    return None if isinstance(body, dict) and wanted in body else (
        f"{kind}: no {wanted!r} in {response.body[:100]!r}")


async def send_valid(http_port: int, wyoming_port: int, valid: Valid) -> str | None:
    """Send one valid request; why it was not answered, or ``None``."""
    if valid.kind.startswith("http"):
        return _check_http(valid.kind, await fetch_http(http_port, valid.raw, VALID_TIMEOUT_S))
    async with RawConnection(wyoming_port, time.monotonic() + VALID_TIMEOUT_S) as conn:
        await conn.send(valid.raw)
        reader = EventReader(conn)
        while (got := await reader.next()) is not None:
            if got[0] == valid.final:
                return None
            if got[0] in ("error", "not-handled"):
                return f"{valid.kind}: {got[0]} {got[1].get('text')!r}"
    return f"{valid.kind}: no {valid.final} ({'closed' if conn.closed else 'timed out'})"


def hostile_cases(host: str, model: str, count: int, seed: int = 7,
                  ) -> list[HttpCase | WyomingCase]:
    """``count`` hostile cases for both servers, shuffled together (reproducibly)."""
    http = round(count * HTTP_SHARE)
    cases: list[HttpCase | WyomingCase] = [*http_cases(host, model, http, seed),
                                           *wyoming_cases(count - http, seed)]
    random.Random(seed).shuffle(cases)
    return cases


def category(case: HttpCase | WyomingCase) -> str:
    """The tally a case counts in."""
    return f"{'http' if isinstance(case, HttpCase) else 'wyoming'}: {case.kind}"


@dataclass
class _Run:
    http_port: int
    wyoming_port: int
    timeout_s: float
    give_up_after: int
    tallies: dict[str, Tally] = field(default_factory=dict)
    valid_failures: list[str] = field(default_factory=list)
    valid_answered: int = 0
    silent: int = 0  # cases in a row that got nothing before their deadline

    async def hostile(self, case: HttpCase | WyomingCase) -> None:
        tally = self.tallies.setdefault(category(case), Tally())
        tally.sent += 1
        if len(tally.failures) >= self.give_up_after:
            tally.skipped += 1
            return
        if isinstance(case, HttpCase):
            reason = await exchange_http(self.http_port, case, self.timeout_s)
        else:
            reason = await exchange_wyoming(self.wyoming_port, case, self.timeout_s)
        self.silent = self.silent + 1 if isinstance(reason, Silence) else 0
        if reason is None:
            tally.passed += 1
        else:
            tally.failures.append(reason)

    async def valid(self, valid: Valid) -> None:
        reason = await send_valid(self.http_port, self.wyoming_port, valid)
        if reason is None:
            self.valid_answered += 1
        else:
            self.valid_failures.append(reason)


async def run_server_fuzz(http_port: int, wyoming_port: int, model: str, count: int,
                          rss: Callable[[], int], *, asr: bool, tts: bool, seed: int = 7,
                          valid_every: int = 50, concurrency: int = 8, timeout_s: float = 20.0,
                          give_up_after: int = 5, rss_ceiling: int = 1 << 30,
                          ) -> ServerFuzzResult:
    """Send ``count`` hostile cases (and valid requests between) and tally what came back."""
    host = f"127.0.0.1:{http_port}"
    valid = valid_requests(host, model, asr=asr, tts=tts)
    run = _Run(http_port, wyoming_port, timeout_s, give_up_after)
    for warm in valid:  # every path once, so that first-use allocations are not counted
        await run.valid(warm)
    if run.valid_failures:
        raise RuntimeError(f"a valid request failed before the fuzz: {run.valid_failures}")
    run.valid_answered = 0
    # Then a quarter as many hostile cases of another seed, at full concurrency and not
    # counted: what every path allocates once when several run at the same time (speech
    # slots, parsing threads, longer prompts in the worker's KV) is not growth.
    warm_up = _Run(http_port, wyoming_port, timeout_s, give_up_after)
    warm_cases = iter(hostile_cases(host, model, max(count // 4, 50), seed + 1))

    async def warm_worker() -> None:
        for case in warm_cases:
            await warm_up.hostile(case)

    await asyncio.gather(*(warm_worker() for _ in range(concurrency)))
    jobs: list[HttpCase | WyomingCase | Valid] = []
    for i, case in enumerate(hostile_cases(host, model, count, seed), start=1):
        jobs.append(case)
        if i % valid_every == 0:
            jobs.append(valid[(i // valid_every) % len(valid)])
    before, started = rss(), time.monotonic()
    aborted: str | None = None
    queue = iter(jobs)

    async def worker() -> None:
        nonlocal aborted
        for job in queue:
            if aborted:
                return
            await (run.valid(job) if isinstance(job, Valid) else run.hostile(job))
            if rss() - before > rss_ceiling:
                aborted = f"the service grew by more than {rss_ceiling >> 20} MiB"
            elif run.silent >= 2 * concurrency:
                aborted = f"the service stopped answering ({run.silent} cases in a row)"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ServerFuzzResult(run.tallies, sum(isinstance(j, Valid) for j in jobs),
                            run.valid_answered, run.valid_failures,
                            time.monotonic() - started, rss() - before, aborted)

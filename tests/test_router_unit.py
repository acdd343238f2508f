"""The router and its circuit breaker with fake generators and a fake clock: milliseconds each.

What the end-to-end tests (test_escalation.py, test_harden_escalation.py) show
against a real server, here one decision at a time: which reason escalates a
request, the fallback to the local model when the remote fails, and the breaker
that skips a failing remote and tries it again once its pause is over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from appliance.config.schema import EscalationSettings, RouteSettings, ThermalLevel
from appliance.generate.base import GenerationFailed, GeneratorCrashed, GeneratorUnavailable
from appliance.generate.breaker import CircuitBreaker
from appliance.llm.types import ChatRequest
from appliance.protocol.messages import Request
from appliance.service.router import Routed, Router
from tests.fakes import FakeClock, FakeGenerator, FakeStream, Reply

T = TypeVar("T")

NORMAL, WARM, HOT = ThermalLevel("normal", 0.0), ThermalLevel("warm", 60.0), \
    ThermalLevel("hot", 75.0)
LEVELS = (NORMAL, WARM, HOT)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh loop, with a deadline so a broken fake cannot hang."""
    return asyncio.run(asyncio.wait_for(coroutine, 5))


def router(local: FakeGenerator, remote: FakeGenerator | None, clock: FakeClock | None = None,
           kid_safe: bool = False, sources: tuple[str, ...] = ("mqtt", "sensor", "voice", "api"),
           **route: Any) -> Router:
    """A router with escalation on, ``route`` over the defaults, a breaker of 2 for 60 s."""
    escalation = EscalationSettings(enabled=True, endpoint="http://big",
                                    route=RouteSettings(**route), sources=sources,  # type: ignore[arg-type]
                                    breaker_failures=2, breaker_s=60.0)
    breaker = CircuitBreaker(escalation.breaker_failures, escalation.breaker_s,
                             clock or FakeClock())
    return Router(local, remote, escalation, LEVELS, kid_safe=kid_safe, breaker=breaker)


def ask(text: str = "What time is it?", source: str = "mqtt", tier: str = "auto",
        ) -> tuple[Request, ChatRequest]:
    request = Request(id=f"r-{text[:8]}", source=source, text=text, tier=tier)  # type: ignore[arg-type]
    return request, ChatRequest(text, id=request.id)


def answer(r: Router, text: str = "What time is it?", level: ThermalLevel = NORMAL,
           queued: int = 0, **how: Any) -> tuple[Routed, FakeStream]:
    request, chat = ask(text, **how)
    stream = FakeStream()
    return run(r.run(request, chat, stream, level=level, queued=queued)), stream


def escalated(routed: Routed) -> dict[str, Any] | None:
    """The answer's ``escalation`` field, as published."""
    return routed.escalation.to_json() if routed.escalation is not None else None


# --- escalation thresholds ------------------------------------------------------------------------

@pytest.mark.parametrize(("how", "reason"), [
    ({"tier": "remote"}, "asked"),
    ({"level": HOT}, "heat"),
    ({"level": WARM}, "heat"),
    ({"queued": 3}, "queue"),
    ({"text": "Explain why the sky is blue."}, "keywords"),
    ({"text": "one two three four five six"}, "words"),
])
def test_each_route_reason_escalates(how: dict[str, Any], reason: str) -> None:
    local, remote = FakeGenerator(), FakeGenerator([Reply(("big", " answer"))], name="big")
    r = router(local, remote, level_at_least="warm", queue_over=2, min_words=6)
    routed, stream = answer(r, **how)
    assert (routed.tier, escalated(routed)) == ("remote", {"reason": reason})
    assert routed.completion.text == stream.text == "big answer"
    assert local.requests == []


@pytest.mark.parametrize("how", [
    {"level": NORMAL, "queued": 2, "text": "one two three four five"},  # every threshold, just
    {"tier": "local", "text": "Explain why the sky is blue."},
    {"source": "sensor", "text": "Explain why the sky is blue."},  # not among the sources
])
def test_below_every_threshold_the_local_model_answers(how: dict[str, Any]) -> None:
    local, remote = FakeGenerator([Reply(("small",))]), FakeGenerator()
    r = router(local, remote, sources=("mqtt", "api"), level_at_least="warm", queue_over=2,
               min_words=6)
    routed, _ = answer(r, **how)
    assert (routed.tier, routed.escalation, routed.completion.text) == ("local", None, "small")
    assert remote.requests == []


def test_toy_mode_and_grammar_requests_never_escalate() -> None:
    local, remote = FakeGenerator(), FakeGenerator()
    toy = router(local, remote, kid_safe=True)
    assert not toy.escalates
    assert answer(toy, tier="remote")[0].tier == "local"
    request, chat = ask(tier="remote")
    schema = ChatRequest(chat.text, id=chat.id, json_schema='{"type": "object"}')
    assert router(local, remote).reason(request, schema, NORMAL, 0) is None
    assert remote.requests == []


def test_only_the_system_prompt_and_the_question_leave_the_device() -> None:
    local, remote = FakeGenerator(), FakeGenerator()
    request, chat = ask(tier="remote")
    full = ChatRequest(chat.text, id=chat.id, system_prompt="Be brief.",
                       context=("a private passage",), max_tokens=9)
    run(router(local, remote).run(request, full, FakeStream(), level=NORMAL))
    sent = remote.requests[0]
    assert (sent.text, sent.system_prompt, sent.max_tokens, sent.context) == (
        chat.text, "Be brief.", 9, ())


def test_low_confidence_restarts_the_stream_and_escalates() -> None:
    local = FakeGenerator([Reply(("um",), low_confidence=True, confidence=-3.5)])
    remote = FakeGenerator([Reply(("sure",))])
    routed, stream = answer(router(local, remote, confidence_below=-2.0))
    assert local.requests[0].confidence is not None  # the local model was watched
    assert routed.tier == "remote"
    assert escalated(routed) == {"reason": "confidence", "confidence": -3.5, "local_tokens": 1}
    assert (stream.restarts, stream.text) == (1, "sure")


# --- fallback to local ----------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [GeneratorUnavailable("unreachable"),
                                     GeneratorCrashed("connection reset"),
                                     GenerationFailed("bad answer")])
def test_a_failing_remote_falls_back_to_a_local_answer(failure: GenerationFailed) -> None:
    local, remote = FakeGenerator([Reply(("local",))]), FakeGenerator([failure])
    changed: list[bool] = []
    r = router(local, remote)
    r.on_change = lambda: changed.append(True)
    routed, stream = answer(r, tier="remote")
    assert routed.tier == "local"
    assert escalated(routed) == {"reason": "asked", "fallback": str(failure)}
    assert (stream.text, stream.restarts, changed) == ("local", 0, [True])
    assert local.requests[0].confidence is None


def test_a_remote_that_dies_mid_stream_voids_what_it_sent() -> None:
    class DiesAfterOne(FakeGenerator):
        async def generate(self, request: ChatRequest, on_chunk: Any = None) -> Any:
            await super().generate(request, on_chunk)
            raise GeneratorCrashed("stream cut")

    local = FakeGenerator([Reply(("whole", " local"))])
    remote = DiesAfterOne([Reply(("half",))])
    routed, stream = answer(router(local, remote), tier="remote")
    assert escalated(routed) == {"reason": "asked", "fallback": "stream cut"}
    assert (stream.restarts, stream.text) == (1, "whole local")


# --- the circuit breaker --------------------------------------------------------------------------

def test_the_breaker_opens_after_failures_in_a_row_and_skips_the_remote() -> None:
    clock = FakeClock()
    local = FakeGenerator()
    remote = FakeGenerator([GeneratorUnavailable("down"), GeneratorUnavailable("still down")])
    r = router(local, remote, clock)
    answer(r, tier="remote")
    assert not r.breaker.open  # one failure of two
    answer(r, tier="remote")
    assert r.breaker.open
    routed, _ = answer(r, tier="remote")
    assert len(remote.requests) == 2  # the third was not even tried
    assert routed.escalation is not None and routed.tier == "local"
    assert routed.escalation.fallback == ("the remote model is skipped after repeated "
                                             "failures (last: still down)")
    assert r.describe() == {"model": "fake", "open": True, "retry_in_s": 60,
                            "error": "still down"}


def test_after_its_pause_one_try_decides_and_a_success_closes_it() -> None:
    clock = FakeClock()
    remote = FakeGenerator([GeneratorUnavailable("down")] * 3 + [Reply(("back",))])
    r = router(FakeGenerator(), remote, clock)
    answer(r, tier="remote")
    answer(r, tier="remote")
    clock.advance(59.9)
    assert r.breaker.open
    clock.advance(0.1)
    assert not r.breaker.open
    answer(r, tier="remote")  # one failure after the pause reopens it at once
    assert r.breaker.open and len(remote.requests) == 3
    clock.advance(60)
    routed, stream = answer(r, tier="remote")
    assert (routed.tier, stream.text) == ("remote", "back")
    assert r.breaker.describe() == {"open": False, "retry_in_s": 0, "error": None}


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    breaker = CircuitBreaker(2, 30.0, FakeClock())
    assert breaker.failed("a") is False
    breaker.succeeded()
    assert breaker.failed("b") is False
    assert breaker.allow()
    assert breaker.failed("c") is True
    assert not breaker.allow()


# --- cancel and budget ----------------------------------------------------------------------------

def test_cancel_reaches_the_generator_that_runs_the_request() -> None:
    hold = asyncio.Event()
    remote = FakeGenerator([Reply(("a", "b", "c"), hold=hold, hold_after=1)])
    local = FakeGenerator()
    r = router(local, remote)
    request, chat = ask(tier="remote")

    async def scenario() -> Routed:
        running = asyncio.create_task(r.run(request, chat, FakeStream(), level=NORMAL))
        await remote.holding.wait()
        r.cancel(request.id)
        return await running

    routed = run(scenario())
    assert (remote.cancelled, local.cancelled) == ([request.id], [])
    assert (routed.completion.finish_reason, routed.completion.text) == ("cancelled", "a")
    r.cancel("idle")  # nothing runs it: the local model is told
    assert local.cancelled == ["idle"]


def test_the_budget_goes_to_every_generator() -> None:
    local, remote = FakeGenerator(), FakeGenerator()
    r = router(local, remote)
    r.set_budget(12)
    r.set_budget(None)
    assert local.budgets == remote.budgets == [12, None]
    assert router(local, None).describe() is None

"""The dispatcher's scheduling, with a scripted generator: milliseconds, no model, no broker.

What the end-to-end tests (test_dispatcher.py, test_thermal.py, test_faults.py)
show with a real worker, here in isolation: a voice request preempts a running
sensor rule, which runs again afterwards; a crashed generation gets one more
attempt; heat defers rules and, at ``max_tokens: 0``, answers without
generating; a queued request can be cancelled; and a failure keeps its kind
(:class:`~appliance.errors.ErrorCode`) all the way to the answer and the APIs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.api.errors import ApiError, Problem
from appliance.api.gate import ApiGate, check_answer
from appliance.config.schema import DEFAULT_THERMAL_LEVELS, LlmSettings, Rule
from appliance.errors import ErrorCode, PromptTooLong
from appliance.generate.base import GenerationFailed, GeneratorCrashed, GeneratorUnavailable
from appliance.llm import ChatRequest
from appliance.mqtt.contract import Topics
from appliance.protocol import worker_pipe as pipe
from appliance.protocol.answer import Answer, Failure
from appliance.protocol.messages import Request, Source
from appliance.rules import RuleSet
from appliance.service.dispatcher import COOLING_REPLY, Dispatcher
from appliance.service.journal import Journal
from appliance.service.ratelimit import RateLimiter
from appliance.service.router import Router
from appliance.service.scheduler import Rejected
from appliance.service.status import Status
from tests.fakes import FakeGenerator, FakeOutlet, Reply, Step

TOPICS = Topics.under("appliance/t")
LEVELS = {level.name: level for level in DEFAULT_THERMAL_LEVELS}
HOT_RULE = Rule(name="hot", source="greenhouse", prompt="It is {temperature} degrees.",
                when="temperature > 40", min_interval_s=0.0)


class Desk:
    """A dispatcher over a :class:`FakeGenerator`, its answers as the outlet got them."""

    def __init__(self, tmp_path: Path, script: list[Step], queue_size: int = 4) -> None:
        self.local = FakeGenerator(script)
        self.outlet = FakeOutlet()
        self.journal = Journal(tmp_path / "journal.sqlite3")
        self.status = Status()
        self.dispatcher = Dispatcher(
            router=Router(self.local), outlet=self.outlet, journal=self.journal, topics=TOPICS,
            rules=RuleSet((HOT_RULE,), TOPICS.base), status=self.status, queue_size=queue_size,
            stream=False, llm=LlmSettings(model=None))
        self.watched: dict[str, Answer] = {}

    def answers(self) -> list[dict[str, Any]]:
        """Every answer delivered on MQTT, in order."""
        return [json.loads(m.payload) for _id, messages in self.outlet.delivered
                for m in messages]

    def ask(self, request_id: str, source: Source = "mqtt") -> None:
        """Submit a question."""
        self.dispatcher.submit(Request(id=request_id, source=source, text="hi"))

    def sensor(self, temperature: float = 45) -> None:
        """A greenhouse event that fires the rule."""
        assert self.dispatcher.on_event(TOPICS.event("greenhouse"),
                                        {"temperature": temperature}) == 1


def run(desk: Desk, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the dispatcher while ``scenario`` plays, then stop it (bounded)."""

    async def main() -> None:
        task = asyncio.create_task(desk.dispatcher.run())
        try:
            await asyncio.wait_for(scenario(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


async def answered(desk: Desk, count: int) -> list[dict[str, Any]]:
    """Wait (bounded by :func:`run`) until ``count`` answers are out."""
    while len(desk.answers()) < count:
        await asyncio.sleep(0)
    return desk.answers()


def test_voice_preempts_a_running_rule_which_then_runs_again(tmp_path: Path) -> None:
    hold = asyncio.Event()
    desk = Desk(tmp_path, [Reply(("long", " story"), hold=hold, hold_after=1), Reply(("hello",)),
                           Reply(("story again",))])

    async def scenario() -> None:
        desk.sensor()
        await desk.local.started.wait()
        await asyncio.sleep(0)
        desk.ask("v1", "voice")
        answers = await answered(desk, 2)
        assert [(a["source"], a["text"], a["finish_reason"]) for a in answers] == [
            ("voice", "hello", "stop"), ("sensor", "story again", "stop")]

    run(desk, scenario)
    assert [r.id for r in desk.local.requests][1] == "v1"
    assert len(desk.local.cancelled) == 1  # the rule, once


def test_a_crashed_generation_runs_once_more(tmp_path: Path) -> None:
    desk = Desk(tmp_path, [GeneratorCrashed("the worker died"), Reply(("fine",))])

    async def scenario() -> None:
        desk.ask("q1")
        (answer,) = await answered(desk, 1)
        assert (answer["text"], answer["finish_reason"]) == ("fine", "stop")

    run(desk, scenario)
    assert [r.id for r in desk.local.requests] == ["q1", "q1"]


def test_a_second_crash_is_answered_with_the_error_and_its_code(tmp_path: Path) -> None:
    desk = Desk(tmp_path, [GeneratorCrashed("the worker died"), GeneratorCrashed("again")])

    async def scenario() -> None:
        desk.ask("q1")
        (answer,) = await answered(desk, 1)
        assert (answer["finish_reason"], answer["error"], answer["error_code"]) == (
            "error", "again", "internal")

    run(desk, scenario)


@pytest.mark.parametrize(("failure", "code", "problem"), [
    (GenerationFailed(str(PromptTooLong("the prompt has 3000 tokens")),
                      PromptTooLong.code), "context_too_long", Problem.CONTEXT_TOO_LONG),
    (GeneratorUnavailable("the local model is restarting"), "worker_restarting",
     Problem.UNAVAILABLE),
    (GenerationFailed("something broke"), "internal", Problem.INTERNAL),
])
def test_a_failure_keeps_its_kind_to_the_api(tmp_path: Path, failure: GenerationFailed,
                                            code: str, problem: Problem) -> None:
    desk = Desk(tmp_path, [failure])

    async def scenario() -> None:
        desk.ask("q1")
        (answer,) = await answered(desk, 1)
        assert answer["error_code"] == code

    run(desk, scenario)
    (published,) = desk.answers()
    failure = Failure(ErrorCode(published["error_code"]), published["error"])
    with pytest.raises(ApiError) as raised:
        check_answer(Answer("q1", "api", "", "error", error=failure))
    assert raised.value.problem is problem


def test_error_codes_cross_the_worker_pipe() -> None:
    line = pipe.encode(pipe.Failed("q1", "too long", ErrorCode.CONTEXT_TOO_LONG))
    assert pipe.decode(line) == pipe.Failed("q1", "too long", ErrorCode.CONTEXT_TOO_LONG)
    assert '"code": "context_too_long"' in line
    with pytest.raises(pipe.ProtocolError, match="not a worker message"):
        pipe.decode('{"type": "failed", "data": {"id": "q1", "error": "x", "code": "nope"}}')


def test_heat_defers_rules_until_it_is_cooler(tmp_path: Path) -> None:
    desk = Desk(tmp_path, [Reply(("cool now",))])

    async def scenario() -> None:
        desk.dispatcher.set_level(LEVELS["critical"], throttled=True)
        desk.sensor()
        while desk.status.queue_depth != 1 or len(desk.dispatcher.queue):
            await asyncio.sleep(0)  # taken from the queue and deferred
        assert desk.local.requests == [] and desk.answers() == []
        desk.dispatcher.set_level(LEVELS["normal"], throttled=False)
        (answer,) = await answered(desk, 1)
        assert (answer["source"], answer["text"]) == ("sensor", "cool now")

    run(desk, scenario)


def test_no_generation_at_all_when_max_tokens_is_zero(tmp_path: Path) -> None:
    desk = Desk(tmp_path, [])

    async def scenario() -> None:
        desk.dispatcher.set_level(LEVELS["emergency"], throttled=True)
        desk.ask("q1")
        (answer,) = await answered(desk, 1)
        assert (answer["finish_reason"], answer["text"]) == ("throttled", COOLING_REPLY)

    run(desk, scenario)
    assert desk.local.requests == []


def test_a_queued_request_is_cancelled_and_answered_so(tmp_path: Path) -> None:
    hold = asyncio.Event()
    desk = Desk(tmp_path, [Reply(("a",), hold=hold)])

    async def scenario() -> None:
        desk.ask("q1")
        await desk.local.started.wait()
        desk.ask("q2")
        assert desk.dispatcher.cancel("q2") and not desk.dispatcher.cancel("nope")
        (answer,) = await answered(desk, 1)
        assert (answer["id"], answer["finish_reason"]) == ("q2", "cancelled")
        hold.set()
        await answered(desk, 2)

    run(desk, scenario)
    assert [r.id for r in desk.local.requests] == ["q1"]


def test_a_full_queue_refuses_with_its_code(tmp_path: Path) -> None:
    desk = Desk(tmp_path, [], queue_size=1)
    desk.ask("q1")
    with pytest.raises(Rejected, match="queue full") as raised:
        desk.ask("q2")
    assert raised.value.code is ErrorCode.QUEUE_FULL


def test_a_retried_api_answer_streams_on_from_where_the_client_is(tmp_path: Path) -> None:
    """A worker that dies mid-stream: the retry's text is not streamed twice to the client."""
    desk = Desk(tmp_path, [Reply(("Hel", "lo"), crash=GeneratorCrashed("the worker died")),
                           Reply(("Hel", "lo", " there"))])
    gate = ApiGate(desk.dispatcher, RateLimiter(60))

    deltas: list[str] = []
    answers: list[Answer] = []

    async def scenario() -> None:
        pending = gate.submit(ChatRequest("hi"), "127.0.0.1", api="http")
        async for event in pending.events():
            if isinstance(event, Answer):
                answers.append(event)
            else:
                deltas.append(event.delta)

    run(desk, scenario)
    (answer,) = answers
    assert "".join(deltas) == answer.text == "Hello there"
    assert len(desk.local.requests) == 2

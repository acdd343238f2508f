"""Several requests at once (``llm.parallel``): the dispatcher's slots, on a real loop, no model.

A :class:`SlowGenerator` holds every answer until the test releases it (or
cancels it), so a test sees exactly which requests run together. What is
shown: N requests run at once and the next waits; a voice request overtakes
when every slot is busy; an interactive request preempts a sensor rule only
when no slot is free; a cancel or a crash touches one request only; drain
waits for all, and at its deadline cancels all; a hot level's ``parallel: 1``
caps what starts from then on; and the model's request carries its priority.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from appliance.config.schema import DEFAULT_THERMAL_LEVELS, LlmSettings, Rule
from appliance.generate.base import GeneratorCrashed, Tier
from appliance.llm.types import ChatRequest, Chunk, Completion, OnChunk
from appliance.mqtt.contract import Topics
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request, Source
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher
from appliance.service.journal import Journal
from appliance.service.preparation import Preparation
from appliance.service.router import Router
from appliance.service.status import Status
from tests.fakes import FakeOutlet
from tests.helpers import eventually_async, within

TOPICS = Topics.under("appliance/p")
LEVELS = {level.name: level for level in DEFAULT_THERMAL_LEVELS}
RULE = Rule(name="hot", source="greenhouse", prompt="It is {temperature} degrees.",
            when="temperature > 40", min_interval_s=0.0)


class SlowGenerator:
    """A :class:`~appliance.generate.base.Generator` whose answers wait for the test.

    Each generation runs until :meth:`release` (it answers ``"ok"``) or
    :meth:`cancel` (``cancelled``); an id in :attr:`crash` raises
    :class:`GeneratorCrashed` once it is released, the first time only.
    """

    def __init__(self) -> None:
        self.active: dict[str, ChatRequest] = {}
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.crash: set[str] = set()
        self.most = 0  # the most generations seen at once
        self._released: set[str] = set()
        self._cancelling: set[str] = set()
        self._wake: dict[str, asyncio.Event] = {}

    @property
    def name(self) -> str:
        """What answers."""
        return "slow"

    @property
    def tier(self) -> Tier:
        """``local``: the device's own."""
        return "local"

    async def generate(self, request: ChatRequest, on_chunk: OnChunk | None = None,
                       ) -> Completion:
        """Wait for :meth:`release` or :meth:`cancel`, then answer."""
        rid = request.id
        self.calls.append(rid)
        self.active[rid] = request
        self.most = max(self.most, len(self.active))
        wake = self._wake[rid] = asyncio.Event()
        try:
            while rid not in self._released and rid not in self._cancelling:
                await wake.wait()
                wake.clear()
        finally:
            del self.active[rid]
        if rid in self.crash:
            self.crash.discard(rid)
            raise GeneratorCrashed("the worker died")
        if rid in self._cancelling:
            self._cancelling.discard(rid)
            return Completion(rid, "", 0, "cancelled", 1.0, 1.0, self.name)
        if on_chunk is not None:
            on_chunk(Chunk(rid, 0, "ok"))
        return Completion(rid, "ok", 1, "stop", 1.0, 1.0, self.name)

    def release(self, *request_ids: str) -> None:
        """Let these requests answer (now, or as soon as they start)."""
        for rid in request_ids:
            self._released.add(rid)
            self._poke(rid)

    def cancel(self, request_id: str) -> None:
        """End ``request_id``'s running generation with ``cancelled``."""
        self.cancelled.append(request_id)
        if request_id in self.active:
            self._cancelling.add(request_id)
            self._poke(request_id)

    def _poke(self, request_id: str) -> None:
        wake = self._wake.get(request_id)
        if wake is not None:
            wake.set()

    def set_budget(self, tokens: int | None) -> None:
        """Not needed here."""

    def prefill(self, request: ChatRequest) -> None:
        """Not needed here."""


class Desk:
    """A dispatcher of ``parallel`` slots over a :class:`SlowGenerator`."""

    def __init__(self, tmp_path: Path, parallel: int) -> None:
        self.local = SlowGenerator()
        self.outlet = FakeOutlet()
        self.answered_so_far: dict[str, Answer] = {}
        self.journal = Journal(tmp_path / "journal.sqlite3")
        self.dispatcher = Dispatcher(
            router=Router(self.local), outlet=self.outlet, journal=self.journal, topics=TOPICS,
            rules=RuleSet((RULE,), TOPICS.base), status=Status(), queue_size=8, stream=False,
            llm=LlmSettings(model=None), parallel=parallel)
        self.dispatcher.answer_listeners.append(
            lambda request, answer: self.answered_so_far.__setitem__(request.id, answer))

    def ask(self, request_id: str, source: Source = "mqtt") -> None:
        """Submit a question."""
        assert self.dispatcher.submit(Request(id=request_id, source=source, text="hi"))

    def sensor(self) -> str:
        """A greenhouse event that fires the rule; returns its request's id."""
        assert self.dispatcher.on_event(TOPICS.event("greenhouse"), {"temperature": 45}) == 1
        queued = self.dispatcher.queue.queued_for_rule("hot")
        assert queued is not None
        return queued.id

    def answers(self) -> dict[str, Answer]:
        """Every answer made (MQTT's and the APIs'), by request id."""
        return dict(self.answered_so_far)

    async def running(self, *request_ids: str) -> None:
        """Wait until exactly these requests are being generated."""
        await eventually_async(lambda: set(self.local.active) == set(request_ids), 5,
                               f"{sorted(request_ids)} running", 0)

    async def answered(self, *request_ids: str) -> dict[str, Answer]:
        """Wait until these requests are answered; returns every answer so far."""
        await eventually_async(lambda: set(request_ids) <= set(self.answers()), 5,
                               f"answers to {sorted(request_ids)}", 0)
        return self.answers()


async def settle() -> None:
    """A few loop turns: whatever was about to start has started."""
    for _ in range(20):
        await asyncio.sleep(0)


def play(desk: Desk, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the dispatcher while ``scenario`` plays, then stop it (bounded)."""

    async def main() -> None:
        task = asyncio.create_task(desk.dispatcher.run())
        try:
            await within(scenario(), 10, "the end of the scenario")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_n_requests_run_at_once_and_the_next_waits_for_a_slot(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=3)

    async def scenario() -> None:
        for rid in ("q1", "q2", "q3", "q4"):
            desk.ask(rid)
        await desk.running("q1", "q2", "q3")
        await settle()
        assert "q4" not in desk.local.active and len(desk.dispatcher.queue) == 1
        desk.local.release("q2")
        await desk.running("q1", "q3", "q4")
        desk.local.release("q1", "q3", "q4")
        answers = await desk.answered("q1", "q2", "q3", "q4")
        assert {a.finish_reason for a in answers.values()} == {"stop"}

    play(desk, scenario)
    assert desk.local.most == 3


def test_a_voice_request_overtakes_when_every_slot_is_busy(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)

    async def scenario() -> None:
        desk.ask("q1")
        desk.ask("q2")
        await desk.running("q1", "q2")
        desk.ask("v1", "voice")
        await desk.running("q1", "q2", "v1")  # one above the slots: the worker pauses one
        desk.ask("v2", "voice")
        desk.ask("q3")
        await settle()
        assert set(desk.local.active) == {"q1", "q2", "v1"}  # only one overtakes
        desk.local.release("v1")
        await desk.running("q1", "q2", "v2")  # the next voice request, before q3
        desk.local.release("q1", "q2", "v2", "q3")
        await desk.answered("q1", "q2", "q3", "v1", "v2")

    play(desk, scenario)
    assert desk.local.cancelled == []  # nothing was preempted
    priorities = {rid: desk.local.calls.index(rid) for rid in ("v2", "q3")}
    assert priorities["v2"] < priorities["q3"]


def test_one_slot_keeps_todays_order_a_voice_request_waits_for_a_question(
        tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=1)

    async def scenario() -> None:
        desk.ask("q1")
        await desk.running("q1")
        desk.ask("v1", "voice")
        await settle()
        assert set(desk.local.active) == {"q1"}
        desk.local.release("q1", "v1")
        await desk.answered("q1", "v1")

    play(desk, scenario)
    assert desk.local.calls == ["q1", "v1"] and desk.local.most == 1


def test_a_question_preempts_a_rule_only_when_no_slot_is_free(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)

    async def scenario() -> None:
        rule = desk.sensor()
        await desk.running(rule)
        desk.ask("a1", "api")
        await desk.running(rule, "a1")  # a free slot: beside the rule
        assert desk.local.cancelled == []
        desk.ask("a2", "api")
        await desk.running("a1", "a2")  # no free slot: the rule gives way
        assert desk.local.cancelled == [rule]
        desk.local.release("a1", "a2", rule)
        answers = await desk.answered("a1", "a2", rule)
        assert answers[rule].finish_reason == "stop"  # run again, and answered

    play(desk, scenario)
    assert desk.local.calls.count(desk.local.calls[0]) == 2


def test_a_cancel_of_one_leaves_the_others_running(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=3)

    async def scenario() -> None:
        for rid in ("q1", "q2", "q3"):
            desk.ask(rid)
        await desk.running("q1", "q2", "q3")
        assert desk.dispatcher.cancel("q2")
        answers = await desk.answered("q2")
        assert answers["q2"].finish_reason == "cancelled"
        await settle()
        assert set(desk.local.active) == {"q1", "q3"} and desk.local.cancelled == ["q2"]
        desk.local.release("q1", "q3")
        answers = await desk.answered("q1", "q3")
        assert answers["q1"].finish_reason == answers["q3"].finish_reason == "stop"

    play(desk, scenario)


def test_stop_said_aloud_cancels_the_spoken_question_only(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)

    async def scenario() -> None:
        desk.ask("q1")
        desk.ask("v1", "voice")
        await desk.running("q1", "v1")
        desk.dispatcher.barge_in()
        await desk.answered("v1")
        assert set(desk.local.active) == {"q1"} and desk.local.cancelled == ["v1"]
        desk.local.release("q1")
        await desk.answered("q1")

    play(desk, scenario)


def test_drain_waits_for_every_running_request(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)

    async def scenario() -> None:
        for rid in ("q1", "q2", "q3"):
            desk.ask(rid)
        await desk.running("q1", "q2")
        drain = asyncio.create_task(desk.dispatcher.drain(30))
        desk.local.release("q1")
        await desk.answered("q1")
        await settle()
        assert not drain.done() and set(desk.local.active) == {"q2"}  # q3 does not start
        desk.local.release("q2")
        await within(drain, 5, "the drain")
        assert set(desk.answers()) == {"q1", "q2"} and desk.local.cancelled == []

    play(desk, scenario)
    assert desk.local.calls == ["q1", "q2"] and desk.dispatcher.queue.remove("q3")


def test_drain_cancels_every_running_request_at_its_deadline(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)

    async def scenario() -> None:
        desk.ask("q1")
        desk.ask("q2")
        await desk.running("q1", "q2")
        await within(desk.dispatcher.drain(0.05), 5, "the drain")
        assert sorted(desk.local.cancelled) == ["q1", "q2"] and not desk.local.active

    play(desk, scenario)
    assert desk.answers() == {}  # not answered: the journal keeps them for after a restart
    assert desk.dispatcher.queue.remove("q1") and desk.dispatcher.queue.remove("q2")


def test_a_hot_level_caps_what_starts_from_then_on(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)
    warm = LEVELS["warm"]
    assert warm.parallel == 1

    async def scenario() -> None:
        desk.ask("q1")
        desk.ask("q2")
        await desk.running("q1", "q2")
        desk.dispatcher.set_level(warm, throttled=True)
        desk.ask("q3")
        await settle()
        assert set(desk.local.active) == {"q1", "q2"}  # both go on, q3 waits
        desk.local.release("q1")
        await desk.answered("q1")
        await settle()
        assert set(desk.local.active) == {"q2"}  # one slot, still taken
        desk.local.release("q2")
        await desk.running("q3")
        desk.ask("q4")
        await settle()
        assert set(desk.local.active) == {"q3"}
        desk.dispatcher.set_level(LEVELS["normal"], throttled=False)
        await desk.running("q3", "q4")  # cooler: two at once again
        desk.local.release("q3", "q4")
        await desk.answered("q3", "q4")

    play(desk, scenario)


def test_a_crash_retries_only_the_crashed_request(tmp_path: Path) -> None:
    desk = Desk(tmp_path, parallel=2)
    desk.local.crash.add("q1")

    async def scenario() -> None:
        desk.ask("q1")
        desk.ask("q2")
        await desk.running("q1", "q2")
        desk.local.release("q1")  # it crashes, and runs again (released: it answers)
        answers = await desk.answered("q1")
        assert answers["q1"].finish_reason == "stop"
        assert set(desk.local.active) == {"q2"}
        desk.local.release("q2")
        await desk.answered("q2")

    play(desk, scenario)
    assert desk.local.calls == ["q1", "q2", "q1"] and desk.local.cancelled == []


def test_the_models_request_carries_its_priority() -> None:
    preparation = Preparation(LlmSettings(model=None))
    chats = {source: preparation.chat(Request(id="r", source=source, text="hi"))
             for source in ("voice", "api", "sensor")}
    assert {source: chat.priority for source, chat in chats.items()} == {
        "voice": 0, "api": 1, "sensor": 2}
    spoken = replace(Request(id="r", source="voice", text="hi"), chat=ChatRequest("x"))
    assert preparation.chat(spoken).priority == 0

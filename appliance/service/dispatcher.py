"""The dispatcher: every request, from its entrance to its answer.

It joins three parts, each in its own module: the :class:`Scheduler` (which
request runs next), the :class:`Preparation` (what the model is asked) and
the :class:`RuleHandling` (sensor events to requests). Each request it
takes runs in a task of its own, beside the others the scheduler lets run
(``parallel``): it asks the router for a generation, lets the verifier act on
a decision, prices the answer with the power meter, and hands the
:class:`~appliance.protocol.answer.Answer` to the outlets. An action's own
phrase acts at once, without the queue or the model. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.actions.decision import AnswerText, parse_decision
from appliance.actions.service import ActionService, DuplicateProposal
from appliance.actions.world import WorldState
from appliance.actions.yes_no import yes_or_no
from appliance.config.schema import LlmSettings, ThermalLevel
from appliance.errors import ErrorCode
from appliance.generate.base import GenerationFailed, GeneratorCrashed
from appliance.llm import Chunk
from appliance.logs import bind_request, get_logger
from appliance.mqtt.contract import Topics
from appliance.power.monitor import PowerMonitor
from appliance.protocol.answer import Answer, Failure
from appliance.protocol.messages import Request
from appliance.rules import RuleSet
from appliance.service.answers import AnswerMaker, Decided
from appliance.service.conversations import Conversations
from appliance.service.guard import INTERNAL_ERROR
from appliance.service.journal import Journal
from appliance.service.outlets import Outlet, Outlets, RequestStream, VoiceOut, Watcher
from appliance.service.preparation import NOT_IN_MANUALS, Preparation, Prepared, Refusal
from appliance.service.router import Router
from appliance.service.rule_handling import RuleHandling
from appliance.service.scheduler import Ran, Rejected, Scheduler
from appliance.service.status import Status
from appliance.service.work_queue import WorkQueue

if TYPE_CHECKING:
    from appliance.service.knowledge_context import KnowledgeContext

log = get_logger("dispatcher")

COOLING_REPLY = "I'm cooling down, please ask again in a minute."


class Dispatcher:
    """Runs requests through ``router`` and answers them through the outlets."""

    def __init__(self, *, router: Router, outlet: Outlet, journal: Journal,
                 topics: Topics, rules: RuleSet, status: Status, queue_size: int,
                 stream: bool, llm: LlmSettings,
                 on_alert: Callable[[], None] = lambda: None, kid_safe: bool = False,
                 device_id: str = "", speaker: VoiceOut | None = None,
                 knowledge: KnowledgeContext | None = None, actions: ActionService | None = None,
                 world: WorldState | None = None, power: PowerMonitor | None = None,
                 conversations: Conversations | None = None, parallel: int = 1) -> None:
        self.router, self.topics, self.status = router, topics, status
        self.outlets = Outlets(outlet, topics, stream=stream, kid_safe=kid_safe,
                               device_id=device_id, speaker=speaker,
                               publish_thinking=llm.publish_thinking)
        self.answers = AnswerMaker(status, device_id, sources=knowledge is not None)
        self.scheduler = Scheduler(journal=journal, status=status, queue_size=queue_size,
                                   cancel_running=router.cancel, on_cooling=self._cooling,
                                   parallel=parallel)
        self.preparation = Preparation(llm, kid_safe=kid_safe, rules=rules,
                                       knowledge=knowledge, actions=actions,
                                       conversations=conversations)
        self.conversations = conversations
        self.rule_handling = RuleHandling(rules, self.scheduler, world)
        self.on_alert = on_alert
        self.actions = actions  # when actions are configured
        self.power = power  # the meter that prices each answer
        self.answer_listeners = self.outlets.listeners

    # --- what the other parts see ------------------------------------------------------------
    @property
    def level(self) -> ThermalLevel:
        """The thermal level new requests run at."""
        return self.scheduler.level

    @property
    def running(self) -> Request | None:
        """The most urgent request being generated, if any (the only one at ``parallel: 1``)."""
        running = self.scheduler.running.values()
        return min(running, key=lambda r: r.priority) if running else None

    @property
    def busy(self) -> int:
        """How many requests are running or waiting to run."""
        return len(self.scheduler.running) + len(self.scheduler.queue)

    @property
    def queue(self) -> WorkQueue:
        """The requests waiting to run."""
        return self.scheduler.queue

    def restore(self) -> int:
        """Queue every journaled request of an earlier run; returns how many."""
        return self.scheduler.restore()

    def submit(self, request: Request, watcher: Watcher | None = None) -> bool:
        """Queue ``request`` (see :meth:`Scheduler.submit`); ``watcher`` gets its answer."""
        if self._confirmation(request, watcher) or self._fast_action(request, watcher):
            return True
        queued = self.scheduler.submit(request)
        if queued and watcher is not None:
            self.outlets.watchers[request.id] = watcher
        return queued

    def on_event(self, topic: str, event: dict[str, Any], now: float | None = None) -> int:
        """Apply the sensor rules to ``event``; returns how many generations it queued."""
        return self.rule_handling.on_event(topic, event, now)

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; ``False`` if there is none with that id.

        The others running go on.
        """
        if request_id in self.scheduler.running:
            self.router.cancel(request_id)
            return True
        request = self.scheduler.remove(request_id)
        if request is None:
            return False
        self._answer(request, self.answers.unanswered(request, "cancelled"))
        return True

    def barge_in(self) -> None:
        """"Stop", said to the device: cancel the spoken questions running.

        With none running, the most urgent request running is cancelled (at
        ``parallel: 1``, whatever runs).
        """
        spoken = [r.id for r in self.scheduler.running.values() if r.source == "voice"]
        most_urgent = self.running
        for request_id in spoken or ([most_urgent.id] if most_urgent is not None else []):
            self.router.cancel(request_id)

    def prefill(self, text: str) -> None:
        """Let an idle local model read a voice question while it is still being spoken."""
        if not self.busy:
            request = Request(id="prefill", source="voice", text=text)
            self.router.prefill(self.preparation.chat(request, self.level))

    def set_level(self, level: ThermalLevel, throttled: bool) -> None:
        """Apply a new thermal level to the requests that start from now on.

        ``throttled``: the level is above the lowest, so idle reads ``throttled``.
        """
        self.status.update(throttled=throttled)
        self.scheduler.set_level(level)

    async def drain(self, finish_s: float) -> None:
        """Finish or cancel the running generations (see :meth:`Scheduler.drain`)."""
        await self.scheduler.drain(finish_s)

    # --- the work loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Take requests, each into a task of its own, until :meth:`drain`.

        It returns once the last of them has ended; cancelled, it cancels them.
        """
        tasks: dict[asyncio.Task[None], Request] = {}
        try:
            while (taken := await self.scheduler.take()) is not None:
                task = asyncio.create_task(self._run_taken(*taken))
                tasks[task] = taken[0]
                task.add_done_callback(lambda done: tasks.pop(done, None))
            await asyncio.gather(*tasks)
        finally:
            left = dict(tasks)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            for request in left.values():  # cancelled before it began: its finally never ran
                if request.id in self.scheduler.running:
                    self.scheduler.done(request, "requeue")

    async def _run_taken(self, request: Request, level: ThermalLevel) -> None:
        """Run one request; its slot is held through the level's pause after it."""
        ran: Ran = "answered"
        try:
            with bind_request(request.id, source=request.source):
                ran = await self._run_one(request, level)
            if level.pause_s:
                await asyncio.sleep(level.pause_s)
        except Exception:  # a bug with this request: answer it; the others go on
            log.exception("request_failed", id=request.id)
            self._answer(request, self.answers.failed(
                request, Failure(ErrorCode.INTERNAL, INTERNAL_ERROR)))
        finally:
            self.scheduler.done(request, ran)

    async def _run_one(self, request: Request, level: ThermalLevel) -> Ran:
        prepared = await self.preparation.prepare(request, level)
        if isinstance(prepared, Refusal):
            self._answer(request, self.answers.unanswered(
                request, "stop", prepared.text, sources=(), refused=NOT_IN_MANUALS))
            return "answered"
        stream: RequestStream | AnswerText = self.outlets.stream(request)
        if prepared.decides:
            stream = AnswerText(stream)
        mark = self.power.mark() if self.power is not None else None
        try:
            routed = await self.router.run(request, prepared.chat, stream,
                                           level=level, queued=len(self.scheduler.queue))
        except GeneratorCrashed as exc:
            if self.scheduler.may_retry(request):
                log.warning("retrying", error=str(exc))
                return "retry"
            self._answer(request, self.answers.failed(request, exc))
            return "answered"
        except GenerationFailed as exc:
            self._answer(request, self.answers.failed(request, exc))
            return "answered"
        if request.id in self.scheduler.preempted \
                and routed.completion.finish_reason == "cancelled":
            return "requeue"  # an interactive request came first
        energy = self.power.since(mark) if mark is not None and self.power is not None else None
        decided = None
        if isinstance(stream, AnswerText):
            decided = self._decided(request, routed.completion.text, stream, prepared)
        self._answer(request, self.answers.generated(
            request, routed, energy=energy, decided=decided,
            sources=tuple(p.source for p in prepared.passages)))
        return "answered"

    def _confirmation(self, request: Request, watcher: Watcher | None) -> bool:
        """A yes or no in the conversation where "Shall I ...?" was asked answers it.

        The same words in another conversation (or in none) are a question like any
        other. What became of the action is the answer (the asking request hears it
        too, as it always does).
        """
        actions, conversation = self.actions, request.conversation
        yes = yes_or_no(request.text) if actions is not None and conversation else None
        if yes is None or actions is None or conversation is None:
            return False
        waiting = actions.waiting_in(conversation, request.entrance)
        outcome = actions.confirm(waiting, yes, request.entrance) if waiting else None
        if outcome is None:
            return False
        if watcher is not None:
            self.outlets.watchers[request.id] = watcher
        self._answer(request, self.answers.acted(request, outcome))
        return True

    def _fast_action(self, request: Request, watcher: Watcher | None) -> bool:
        """An action's own phrase acts at once, without the queue or the model."""
        actions = self.actions
        if actions is None or request.source == "sensor":
            return False
        action = actions.registry.by_phrase(request.text)
        if action is None:
            return False
        try:
            outcome = actions.propose(request.id, action.name, {}, request.entrance,
                                      on_outcome=lambda later: self.outlets.say(request,
                                                                                later.text),
                                      conversation=request.conversation)
        except DuplicateProposal as exc:
            raise Rejected(str(exc)) from None
        if watcher is not None:
            self.outlets.watchers[request.id] = watcher
        self.outlets.say(request, outcome.text)
        self._answer(request, self.answers.acted(request, outcome))
        return True

    def _decided(self, request: Request, reply: str, stream: AnswerText,
                 prepared: Prepared) -> Decided:
        """What the model's decision came to: its text, or what became of the action."""
        assert self.actions is not None
        decision = parse_decision(reply, stream.text)
        if decision.action is None:
            return decision.answer or ""
        try:
            outcome = self.actions.propose(request.id, decision.action, decision.args or {},
                                           request.entrance, allowed=list(prepared.offered),
                                           on_outcome=lambda later: self.outlets.say(
                                               request, later.text),
                                           conversation=request.conversation)
        except DuplicateProposal as exc:
            return Failure(exc.code, str(exc))
        stream.stream(Chunk(request.id, 0, outcome.text))  # the outcome is what is said
        return outcome

    def _cooling(self, request: Request) -> None:
        """The heat will not let ``request`` run at all (``max_tokens: 0``)."""
        self._answer(request, self.answers.unanswered(request, "throttled", COOLING_REPLY))

    def _answer(self, request: Request, answer: Answer) -> None:
        if answer.conversation is not None and self.conversations is not None \
                and answer.finish_reason in ("stop", "length"):
            self.conversations.record(answer.conversation, request.text, answer.text)
        default = self.topics.alert if request.source == "sensor" else self.topics.answer
        self.outlets.answer(request, answer, default)
        if request.source == "sensor" and not answer.failed:
            self.on_alert()

"""The dispatcher: one generation at a time, nothing lost.

Requests arrive from the entrances (MQTT questions and sensor rules, voice,
the HTTP and Wyoming APIs); durable ones are journaled, all are queued by
priority and run one at a time on a :class:`~appliance.generate.base.Generator`.
An interactive request (voice, API) preempts a running sensor generation,
which is requeued. A request whose generator crashes is retried once, then
answered with ``finish_reason: "error"``.

The thermal level (:meth:`Dispatcher.set_level`) caps each answer's tokens,
may ask for brief answers, defers sensor rules (kept in the journal, run when
cooler), pauses between generations, and at ``max_tokens: 0`` answers with a
fixed reply instead of generating.

Every answer goes to every outlet in the same shape: MQTT (the answer and its
stream, through the outbox), the speaker for voice, and the waiter of an API
request (:meth:`Dispatcher.watch`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from appliance.actions.decision import AnswerText, parse_decision
from appliance.actions.service import ActionService, DuplicateProposal
from appliance.actions.world import WorldState
from appliance.config.schema import DEFAULT_THERMAL_LEVELS, LlmSettings, ThermalLevel
from appliance.errors import ApplianceError
from appliance.generate.base import GenerationFailed, GeneratorCrashed
from appliance.knowledge import Passage
from appliance.llm import ChatRequest, Chunk, FinishReason, new_request_id
from appliance.logs import bind_request, get_logger
from appliance.mqtt.contract import Topics
from appliance.power.monitor import Energy, PowerMonitor
from appliance.protocol.messages import INTERACTIVE, Request
from appliance.rules import RuleSet
from appliance.service.guard import INTERNAL_ERROR
from appliance.service.journal import Journal, JournalError
from appliance.service.knowledge_context import KnowledgeContext, refusal
from appliance.service.outlets import Outlet, Outlets, Stream, VoiceOut, Watcher
from appliance.service.router import Router
from appliance.service.status import Status
from appliance.service.work_queue import WorkQueue
from appliance.voice.kid_safe import KID_MAX_TOKENS, KID_SYSTEM_PROMPT

log = get_logger("dispatcher")

MAX_ATTEMPTS = 2
COOLING_REPLY = "I'm cooling down, please ask again in a minute."
BRIEF_INSTRUCTION = " Keep the answer to one short sentence."


class Rejected(ApplianceError):
    """A request was refused (queue full); the message is the public error text."""


def unanswered(finish_reason: FinishReason, text: str = "", **extra: Any) -> dict[str, Any]:
    """The fields of an answer that no generation produced."""
    return {"text": text, "tokens": 0, "finish_reason": finish_reason, **extra}


def _energy_fields(energy: Energy | None, tokens: int) -> dict[str, Any]:
    """``energy_j``, ``avg_w`` and ``tokens_per_j`` of an answer, when the meter could tell."""
    if energy is None or energy.joules <= 0:
        return {}
    return {"energy_j": round(energy.joules, 3), "avg_w": round(energy.avg_w, 2),
            "tokens_per_j": round(tokens / energy.joules, 3)}


class Dispatcher:
    """Queues requests and runs them through ``router``, publishing through ``outlet``."""

    def __init__(self, *, router: Router, outlet: Outlet, journal: Journal,
                 topics: Topics, rules: RuleSet, status: Status, queue_size: int,
                 stream: bool, llm: LlmSettings,
                 on_alert: Callable[[], None] = lambda: None, kid_safe: bool = False,
                 device_id: str = "", speaker: VoiceOut | None = None,
                 knowledge: KnowledgeContext | None = None, actions: ActionService | None = None,
                 world: WorldState | None = None, power: PowerMonitor | None = None) -> None:
        self.router, self.journal = router, journal
        self.outlets = Outlets(outlet, topics, stream=stream, kid_safe=kid_safe,
                               device_id=device_id, speaker=speaker)
        self.on_alert = on_alert
        self.kid_safe = kid_safe
        self.llm = llm
        self.level: ThermalLevel = DEFAULT_THERMAL_LEVELS[0]
        self._deferred: list[Request] = []
        self.topics, self.rules, self.status = topics, rules, status
        self.queue_size = queue_size
        self.queue = WorkQueue()
        self.closing = False
        self.running: Request | None = None
        self._preempted = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.knowledge = knowledge  # when knowledge.enabled
        self.actions = actions  # when actions are configured
        self.world = world  # the latest readings, for rules
        self.power = power  # the meter that prices each answer
        self.answer_listeners = self.outlets.listeners

    # --- intake ----------------------------------------------------------------------------
    def restore(self) -> int:
        """Queue every journaled request of an earlier run; returns how many."""
        pending = self.journal.pending()
        for request in pending:
            self.queue.put(request)
        self._queue_changed()
        return len(pending)

    def submit(self, request: Request, watcher: Watcher | None = None) -> bool:
        """Journal (unless it is an API request) and queue ``request``.

        Returns ``False`` if its id is already journaled. Raises
        :class:`Rejected` when the queue is full, and
        :class:`~appliance.service.journal.JournalError` when it cannot be
        journaled (then it is not queued either).
        """
        if self._fast_action(request, watcher):
            return True
        if len(self.queue) >= self.queue_size:
            raise Rejected(f"queue full ({self.queue_size} requests waiting)")
        if request.source != "api" and not self.journal.add(request):
            return False
        if watcher is not None:
            self.outlets.watchers[request.id] = watcher
        self.queue.put(request)
        running = self.running
        if running is not None and running.source == "sensor" and request.source in INTERACTIVE:
            log.info("preempting", running=running.id, by=request.id)
            self._preempted = True
            self.router.cancel(running.id)
        self._queue_changed()
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
                                                                                later.text))
        except DuplicateProposal as exc:
            raise Rejected(str(exc)) from None
        if watcher is not None:
            self.outlets.watchers[request.id] = watcher
        self.outlets.say(request, outcome.text)
        self._answer(request, outcome.answer_fields())
        return True

    def _action_names(self, request: Request, chat: ChatRequest) -> list[str] | None:
        """The actions the model may choose among for ``request`` (``None``: just answer)."""
        actions = self.actions
        if actions is None or chat.json_schema is not None:
            return None
        if request.source == "sensor":
            names = list(self.rules.actions_of(request.rule))
        else:
            names = list(actions.registry.actions)
        return actions.offered(request.entrance, names) or None

    def on_event(self, topic: str, event: dict[str, Any], now: float | None = None) -> int:
        """Apply the sensor rules to ``event``; returns how many generations it queued."""
        queued = 0
        now = time.monotonic() if now is None else now
        world = self.world.fresh() if self.world is not None else None
        for trigger in self.rules.match(topic, event, world):
            waiting = self.queue.queued_for_rule(trigger.rule)
            if waiting is not None:  # coalesce: the latest event wins
                self.journal.update_text(waiting.id, trigger.prompt)
                self.queue.replace(replace(waiting, text=trigger.prompt))
                continue
            if not self.rules.due(trigger, now):
                continue
            request = Request(id=new_request_id(), source="sensor", text=trigger.prompt,
                              reply_topic=trigger.publish, rule=trigger.rule)
            try:
                self.submit(request)
                queued += 1
            except Rejected as exc:
                log.warning("rule_dropped", rule=trigger.rule, reason=str(exc))
        return queued

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; ``False`` if there is none with that id."""
        if self.running is not None and self.running.id == request_id:
            self.router.cancel(request_id)
            return True
        request = self.queue.remove(request_id)
        if request is None:
            return False
        self._answer(request, unanswered("cancelled"))
        self._queue_changed()
        return True

    def prefill(self, text: str) -> None:
        """Let an idle local model read a voice question while it is still being spoken."""
        if self.running is None and not len(self.queue):
            self.router.prefill(self._chat(Request(id="prefill", source="voice", text=text),
                                           self.level))

    def set_level(self, level: ThermalLevel, throttled: bool) -> None:
        """Apply a new thermal level to the requests that start from now on.

        ``throttled``: the level is above the lowest, so idle reads ``throttled``.
        """
        self.level = level
        self.status.update(throttled=throttled)
        if not level.defer_rules and self._deferred:
            log.info("rules_resumed", count=len(self._deferred))
            for request in self._deferred:
                self.queue.put(request)
            self._deferred.clear()
        self._queue_changed()

    # --- the work loop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Take requests one at a time until :meth:`drain`."""
        while not self.closing:
            request = await self.queue.get()
            if self.closing:
                self.queue.put(request, front=True)
                return
            level = self.level
            if request.source == "sensor" and level.defer_rules:
                self._deferred.append(request)
                log.info("rule_deferred", id=request.id, level=level.name)
                continue
            if level.max_tokens == 0:
                self._answer(request, unanswered("throttled", text=COOLING_REPLY))
                self._queue_changed()
                continue
            self.running = request
            self._idle.clear()
            self.status.update(running=True)
            self._queue_changed()
            try:
                with bind_request(request.id, source=request.source):
                    await self._run_one(request, level)
                if level.pause_s:
                    await asyncio.sleep(level.pause_s)
            except Exception:  # a bug with this request: answer it, and go on with the next
                log.exception("request_failed", id=request.id)
                self._answer(request, unanswered("error", error=INTERNAL_ERROR))
            finally:
                self.running = None
                self._preempted = False
                self._idle.set()
                self.status.update(running=bool(len(self.queue)))
                self._queue_changed()

    def _chat(self, request: Request, level: ThermalLevel) -> ChatRequest:
        """The model's request: the client's own (API) or a plain question, within our limits."""
        base = request.chat or ChatRequest(request.text)
        budget = level.budget(self.llm.max_tokens)
        system = base.system_prompt if base.system_prompt is not None else self.llm.system_prompt
        if request.source == "voice" and self.kid_safe:
            system, budget = KID_SYSTEM_PROMPT, min(budget, KID_MAX_TOKENS)
        return replace(
            base, text=request.text, id=request.id,
            max_tokens=min(request.max_tokens or self.llm.max_tokens, budget),
            system_prompt=system + BRIEF_INSTRUCTION if level.brief else system)

    async def _run_one(self, request: Request, level: ThermalLevel) -> None:
        if request.source != "api":
            try:
                self.journal.count_attempt(request.id)
            except JournalError as exc:  # only the retry count suffers
                log.warning("attempt_not_counted", error=str(exc))
        chat = self._chat(request, level)
        passages = await self._passages(request)
        if passages is None:
            return  # refused: the manuals do not cover it (knowledge.mode: only)
        if passages and self.knowledge is not None:
            chat = self.knowledge.attach(chat, passages)
        names = self._action_names(request, chat)
        stream: Stream | AnswerText = self.outlets.stream(request)
        if names is not None:
            assert self.actions is not None
            registry = self.actions.registry
            chat = replace(chat, json_schema=registry.decision_schema(names),
                           system_prompt=f"{chat.system_prompt}\n\n{registry.tool_list(names)}")
            stream = AnswerText(stream)
        mark = self.power.mark() if self.power is not None else None
        try:
            routed = await self.router.run(request, chat, stream,
                                           level=level, queued=len(self.queue))
        except GeneratorCrashed as exc:
            if request.attempts + 1 < MAX_ATTEMPTS:
                log.warning("retrying", error=str(exc))
                self.queue.put(replace(request, attempts=request.attempts + 1), front=True)
                return
            self._answer(request, unanswered("error", error=str(exc)))
            return
        except GenerationFailed as exc:
            self._answer(request, unanswered("error", error=str(exc)))
            return
        if self._preempted and routed.completion.finish_reason == "cancelled":
            self.queue.put(request, front=True)  # an interactive request came first
            return
        fields = routed.answer_fields()
        if mark is not None and self.power is not None:
            fields.update(_energy_fields(self.power.since(mark), routed.completion.tokens))
        if self.knowledge is not None:
            fields["sources"] = [p.source for p in passages]
        if isinstance(stream, AnswerText):
            fields.update(self._decided(request, routed.completion.text, stream, names or []))
        self._answer(request, fields)

    def _decided(self, request: Request, reply: str, stream: AnswerText,
                 names: list[str]) -> dict[str, Any]:
        """The answer's fields after a decision: its text, or what became of the action."""
        assert self.actions is not None
        decision = parse_decision(reply, stream.text)
        if decision.action is None:
            return {"text": decision.answer or ""}
        try:
            outcome = self.actions.propose(request.id, decision.action, decision.args or {},
                                           request.entrance, allowed=names,
                                           on_outcome=lambda later: self.outlets.say(
                                               request, later.text))
        except DuplicateProposal as exc:
            return unanswered("error", error=str(exc))
        stream.stream(Chunk(request.id, 0, outcome.text))  # the outcome is what is said
        fields = outcome.answer_fields()
        del fields["tokens"], fields["finish_reason"]  # the model's, from its completion
        return fields

    async def _passages(self, request: Request) -> list[Passage] | None:
        """The manual passages for ``request`` ([] for none; ``None``: refused and answered)."""
        knowledge = self.knowledge
        if knowledge is None or (request.source == "sensor"
                                 and not self.rules.uses_knowledge(request.rule)):
            return []
        passages = await knowledge.passages(request.text)
        if passages or knowledge.settings.mode != "only":
            return passages
        self._answer(request, unanswered("stop", text=refusal(
            await knowledge.closest(request.text)), sources=[], refused="not in the manuals"))
        return None

    def _answer(self, request: Request, fields: dict[str, Any]) -> None:
        payload = {"id": request.id, **fields, "throttle_level": self.status.throttle_level,
                   "source": request.source, "device_id": self.outlets.device_id,
                   "model": fields.get("model") or self.status.model}
        if request.rule is not None:
            payload["rule"] = request.rule
        default = self.topics.alert if request.source == "sensor" else self.topics.answer
        self.outlets.answer(request, payload, default)
        if request.source == "sensor" and payload["finish_reason"] != "error":
            self.on_alert()

    def _queue_changed(self) -> None:
        self.status.update(queue_depth=len(self.queue) + len(self._deferred))

    async def drain(self, finish_s: float) -> None:
        """Let the running generation finish for up to ``finish_s``, then cancel it.

        No new generation starts after this. A cancelled request stays in the
        journal and is answered after restart.
        """
        self.closing = True
        running = self.running
        if running is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), finish_s)
        except TimeoutError:
            log.info("cancelling_for_shutdown", id=running.id)
            self._preempted = True  # requeued, not answered: the journal keeps it
            self.router.cancel(running.id)
            await self._idle.wait()


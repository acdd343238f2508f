"""The scheduler: which requests run, beside which, and what becomes of one that cannot finish.

Up to ``parallel`` requests run at once (``llm.parallel``: the local model
decodes them together), fewer when the thermal level caps it
(``ThermalLevel.parallel``); with ``parallel: 1`` one runs at a time.
Requests wait in a :class:`WorkQueue` by priority (voice, then questions, then
sensor rules); durable ones are journaled first, so a crash or a restart loses
none (:meth:`Scheduler.restore`). When every slot is taken:

- a voice request starts anyway, as one more (where ``parallel`` is 2 or more:
  the model worker then pauses the least urgent of what runs);
- otherwise an interactive request (voice, an API) preempts a running sensor
  rule: the rule is cancelled and requeued at the front.

A request whose generator crashed runs once more (:data:`MAX_ATTEMPTS`). Heat
defers sensor rules (they run when it is cooler), and at ``max_tokens: 0`` a
request is not run at all (``on_cooling``).

The scheduler knows nothing of prompts or answers: the dispatcher takes each
request (:meth:`take`), runs it in a task of its own, and says how it went
(:meth:`done`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from appliance.config.schema import DEFAULT_THERMAL_LEVELS, ThermalLevel
from appliance.errors import ApplianceError, ErrorCode
from appliance.logs import get_logger
from appliance.protocol.messages import INTERACTIVE, Request
from appliance.service.journal import Journal, JournalError
from appliance.service.status import Status
from appliance.service.work_queue import WorkQueue

log = get_logger("dispatcher")

MAX_ATTEMPTS = 2
"""A request whose generator crashed is run once more, then answered with an error."""

Ran = Literal["answered", "retry", "requeue"]
"""How a run ended: answered; crashed and worth another attempt; or preempted (run it later)."""


class Rejected(ApplianceError):
    """A request was refused (queue full); the message is the public error text."""

    code = ErrorCode.QUEUE_FULL


class Scheduler:
    """The queue, the running requests, preemption, retries and thermal deferral.

    ``cancel_running(id)`` stops a running generation (the router's cancel);
    ``on_cooling(request)`` answers a request that the heat will not let run;
    ``parallel`` is how many requests run at once (``llm.parallel``, resolved).
    :attr:`running` maps the id of each running request to it, in the order
    they started; :attr:`preempted` holds the ids of those cancelled to be run
    again later.
    """

    def __init__(self, *, journal: Journal, status: Status, queue_size: int,
                 cancel_running: Callable[[str], None],
                 on_cooling: Callable[[Request], None], parallel: int = 1) -> None:
        self.journal, self.status = journal, status
        self.queue_size = queue_size
        self.cancel_running, self.on_cooling = cancel_running, on_cooling
        self.parallel = parallel
        self.queue = WorkQueue()
        self.level: ThermalLevel = DEFAULT_THERMAL_LEVELS[0]
        self.running: dict[str, Request] = {}
        self.preempted: set[str] = set()
        self.closing = False
        self._deferred: list[Request] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._changes = asyncio.Event()  # a slot, the level or the queue changed

    @property
    def slots(self) -> int:
        """How many requests run at once at the current level."""
        cap = self.level.parallel
        return self.parallel if cap is None else max(1, min(self.parallel, cap))

    def _limit(self, request: Request) -> int:
        """How many may be running for ``request`` to start: one more for a voice request."""
        return self.slots + (request.source == "voice" and self.parallel > 1)

    def _has_room(self, request: Request) -> bool:
        """Whether ``request`` could start now, or once the preempted ones have stopped."""
        return len(self.running) - len(self.preempted) < self._limit(request)

    def restore(self) -> int:
        """Queue every journaled request of an earlier run; returns how many."""
        pending = self.journal.pending()
        for request in pending:
            self.queue.put(request)
        self._changed()
        return len(pending)

    def submit(self, request: Request) -> bool:
        """Journal (unless it is an API request) and queue ``request``.

        Returns ``False`` if its id is already journaled. Raises :class:`Rejected`
        when the queue is full, and :class:`JournalError` when it cannot be
        journaled (then it is not queued either).
        """
        if len(self.queue) >= self.queue_size:
            raise Rejected(f"queue full ({self.queue_size} requests waiting)")
        if request.source != "api" and not self.journal.add(request):
            return False
        self.queue.put(request)
        if request.source in INTERACTIVE and not self._has_room(request):
            self._preempt_a_rule(request)
        self._changes.set()
        self._changed()
        return True

    def _preempt_a_rule(self, request: Request) -> None:
        """Cancel the latest started sensor rule (it is requeued), if one runs."""
        rules = [r for r in self.running.values()
                 if r.source == "sensor" and r.id not in self.preempted]
        if rules:
            rule = rules[-1]
            log.info("preempting", running=rule.id, by=request.id)
            self.preempted.add(rule.id)
            self.cancel_running(rule.id)

    def remove(self, request_id: str) -> Request | None:
        """Take a queued (not running) request out of the queue."""
        request = self.queue.remove(request_id)
        if request is not None:
            self._changed()
        return request

    def set_level(self, level: ThermalLevel) -> None:
        """Requests taken from now on run at ``level``; deferred rules resume when it allows."""
        self.level = level
        self._changes.set()
        if not level.defer_rules and self._deferred:
            log.info("rules_resumed", count=len(self._deferred))
            for request in self._deferred:
                self.queue.put(request)
            self._deferred.clear()
        self._changed()

    async def take(self) -> tuple[Request, ThermalLevel] | None:
        """The next request to run and the level it runs at (``None``: closing).

        It waits for a request, and for a slot free to run it in.
        """
        while not self.closing:
            request = await self.queue.get()
            level = self.level
            if self.closing:
                self.queue.put(request, front=True)
                break
            if len(self.running) >= self._limit(request):
                self.queue.put(request, front=True)  # still the most urgent: it waits in place
                self._changes.clear()
                await self._changes.wait()
                continue
            if request.source == "sensor" and level.defer_rules:
                self._deferred.append(request)
                log.info("rule_deferred", id=request.id, level=level.name)
            elif level.max_tokens == 0:
                self.on_cooling(request)
            else:
                self._start(request)
                return request, level
            self._changed()
        return None

    def _start(self, request: Request) -> None:
        self.running[request.id] = request
        self._idle.clear()
        self.status.update(running=True)
        self._changed()
        if request.source != "api":
            try:
                self.journal.count_attempt(request.id)
            except JournalError as exc:  # only the retry count suffers
                log.warning("attempt_not_counted", error=str(exc))

    def may_retry(self, request: Request) -> bool:
        """Whether a request whose generator crashed gets another attempt."""
        return request.attempts + 1 < MAX_ATTEMPTS

    def done(self, request: Request, ran: Ran) -> None:
        """``request`` stopped running; ``ran`` says whether it runs again."""
        if ran == "retry":
            self.queue.put(replace(request, attempts=request.attempts + 1), front=True)
        elif ran == "requeue":
            self.queue.put(request, front=True)
        self.running.pop(request.id, None)
        self.preempted.discard(request.id)
        if not self.running:
            self._idle.set()
        self._changes.set()
        self.status.update(running=bool(self.running) or bool(len(self.queue)))
        self._changed()

    def _changed(self) -> None:
        self.status.update(queue_depth=len(self.queue) + len(self._deferred))

    async def drain(self, finish_s: float) -> None:
        """Let the running generations finish for up to ``finish_s``, then cancel them all.

        Nothing starts after this. A cancelled request stays in the journal and
        is answered after restart.
        """
        self.closing = True
        self._changes.set()
        if not self.running:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), finish_s)
        except TimeoutError:
            for request_id in list(self.running):
                log.info("cancelling_for_shutdown", id=request_id)
                self.preempted.add(request_id)  # requeued, not answered: the journal keeps it
                self.cancel_running(request_id)
            await self._idle.wait()

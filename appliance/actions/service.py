"""Proposals to outcomes: verify, then act, confirm when asked to, and keep a record.

Every proposal (a phrase, the model's choice, a rule's, a button, ``appliance
act``) comes here and nowhere else can act. Each one ends in a record on
``<base>/action``: ``{"id", "action", "args", "source", "verdict", "reason",
"needs", "ms"}``, verdict ``done``, ``refused``, ``awaiting_confirmation``,
``declined`` or ``failed``. With ``confirm: true`` the appliance asks first and
waits ``actions_confirm_s`` for yes or no; silence means no.

A question waiting for yes or no is keyed by its proposal's id, and that id is
the client's: a second proposal with the same id is refused
(:class:`DuplicateProposal`) instead of taking the first one's place. It is
answered only by a confirmer that could have made it: the same source (a
spoken yes answers a spoken proposal, never an operator's), or an operator
(``cmd/confirm``), and the verifier checks the action again for both. Every
question ends in exactly one record: done (or refused or failed when it was
tried), or declined (no, silence, or the appliance stopping).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.actions.executor import ExecutionError, Executor
from appliance.actions.verifier import Verdict, Verifier
from appliance.config.schema import Action
from appliance.errors import ApplianceError
from appliance.logs import get_logger
from appliance.protocol.answer import ActionReport

log = get_logger("actions")

OPERATOR_SOURCES = frozenset({"mqtt"})
"""Whose yes or no answers any waiting question: ``cmd/confirm`` (Home Assistant, scripts)."""


class DuplicateProposal(ApplianceError):
    """A proposal came with the id of one that still waits for yes or no."""


@dataclass(frozen=True)
class Outcome:
    """What became of one proposal; ``text`` is what the appliance says about it."""

    id: str
    action: str
    args: dict[str, Any]
    source: str
    verdict: Verdict
    text: str
    reason: str = ""
    needs: tuple[str, ...] = ()
    ms: float = 0.0

    def record(self) -> dict[str, Any]:
        """The ``<base>/action`` payload."""
        return {"id": self.id, "action": self.action, "args": self.args,
                "source": self.source, "verdict": self.verdict, "reason": self.reason,
                "needs": list(self.needs), "ms": round(self.ms, 1)}

    def report(self) -> ActionReport:
        """What an answer about it says of the action."""
        return ActionReport(self.action, self.verdict, self.needs, self.reason)


@dataclass
class _Pending:
    action: Action
    args: dict[str, Any]
    source: str
    started: float
    timer: asyncio.TimerHandle | None = None
    on_outcome: Callable[[Outcome], None] = field(default=lambda _o: None)
    conversation: str | None = None


@dataclass(frozen=True)
class Question:
    """A proposal waiting for yes or no, and how long it still waits."""

    id: str
    action: str
    args: dict[str, Any]
    source: str
    left_s: float


class ActionService:
    """Verifies and carries out proposals; ``publish_record(record)`` sends each record.

    ``record_listeners`` hear every record too, after it is sent (the console's Activity).
    """

    def __init__(self, verifier: Verifier, executor: Executor,
                 publish_record: Callable[[dict[str, Any]], None], confirm_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.verifier, self.executor = verifier, executor
        self.registry = verifier.registry
        self.publish_record = publish_record
        self.record_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.confirm_s = confirm_s
        self.clock = clock
        self._pending: dict[str, _Pending] = {}

    def offered(self, source: str, names: Iterable[str]) -> list[str]:
        """Those of ``names`` that ``source`` may propose at all: what its model is offered."""
        return [name for name in names
                if self.verifier.check(name, {}, source, gate_only=True).ok]

    def propose(self, request_id: str, name: str, args: Any, source: str, *,
                allowed: Iterable[str] | None = None,
                on_outcome: Callable[[Outcome], None] = lambda _o: None,
                conversation: str | None = None) -> Outcome:
        """Verify ``name(args)`` and act, or ask, or refuse; the outcome is recorded.

        ``on_outcome`` hears the final outcome of an action that waits for a
        confirmation (done, declined, failed); ``conversation`` is the one it was
        asked in, where a yes or no answers it (:meth:`waiting_in`). Raises
        :class:`DuplicateProposal` (and records nothing) while a question with
        ``request_id`` waits.
        """
        if request_id in self._pending:
            raise DuplicateProposal(
                f"an action with id {request_id!r} is still waiting for a yes or no; "
                "give this one another id")
        started = self.clock()
        args = self.registry.with_defaults(name, args)  # what is left out takes its default
        check = self.verifier.check(name, args, source, allowed)
        if not check.ok:
            return self._finish(Outcome(request_id, name, args if isinstance(args, dict) else {},
                                        source, "refused", check.text, check.reason,
                                        check.needs), started)
        action = self.registry.actions[name]
        if action.confirm:
            pending = self._pending[request_id] = _Pending(action, args, source, started,
                                                           on_outcome=on_outcome,
                                                           conversation=conversation)
            pending.timer = asyncio.get_running_loop().call_later(
                self.confirm_s, self._expire, request_id)
            label = (action.description or action.name).rstrip(".")
            label = label[0].lower() + label[1:] if label else label
            return self._finish(Outcome(request_id, name, args, source,
                                        "awaiting_confirmation", f"Shall I {label}?",
                                        "waiting for yes or no"), started)
        return self._act(request_id, action, args, source, started)

    def _act(self, request_id: str, action: Action, args: dict[str, Any], source: str,
             started: float, confirmer: str | None = None) -> Outcome:
        # The requirements are checked once more: a confirmation may come much later.
        check = self.verifier.check(action.name, args, source)
        if check.ok and confirmer is not None:  # and the confirmer could have proposed it
            check = self.verifier.check(action.name, args, confirmer)
        if not check.ok:
            return self._finish(Outcome(request_id, action.name, args, source, "refused",
                                        check.text, check.reason, check.needs), started)
        try:
            self.executor.run(action, args, self.verifier.world.fresh())
        except ExecutionError as exc:
            log.error("action_failed", action=action.name, error=str(exc))
            label = (action.description or action.name).lower()
            return self._finish(Outcome(request_id, action.name, args, source, "failed",
                                        f"I could not {label}: {exc}", str(exc)), started)
        self.verifier.done(action.name)
        return self._finish(Outcome(request_id, action.name, args, source, "done",
                                    "Done.", ""), started)

    def confirm(self, request_id: str, yes: bool, by: str) -> Outcome | None:
        """``by``'s answer to "Shall I ...?" for ``request_id``; ``None`` if none waits for it.

        A question that ``by`` may not answer (:func:`_answers`) is left waiting.
        """
        pending = self._pending.get(request_id)
        if pending is None or not _answers(by, pending):
            return None
        del self._pending[request_id]
        if pending.timer is not None:
            pending.timer.cancel()
        if yes:
            outcome = self._act(request_id, pending.action, pending.args, pending.source,
                                pending.started, confirmer=by)
        else:
            outcome = self._decline(request_id, pending, "declined")
        pending.on_outcome(outcome)
        return outcome

    def waiting_in(self, conversation: str, by: str) -> str | None:
        """The id of the question waiting in ``conversation`` that ``by`` may answer."""
        return next((request_id for request_id, pending in reversed(self._pending.items())
                     if pending.conversation == conversation and _answers(by, pending)), None)

    def latest_waiting(self, by: str) -> str | None:
        """The id of the most recent question still waiting that ``by`` may answer."""
        return next((request_id for request_id, pending in reversed(self._pending.items())
                     if _answers(by, pending)), None)

    def waiting(self) -> list[Question]:
        """The questions still waiting for yes or no, newest first."""
        now = self.clock()
        return [Question(request_id, p.action.name, p.args, p.source,
                         p.started + self.confirm_s - now)
                for request_id, p in reversed(self._pending.items())]

    def close(self) -> None:
        """The appliance stops: every question still waiting is declined (and recorded)."""
        while self._pending:
            request_id, pending = self._pending.popitem()
            if pending.timer is not None:
                pending.timer.cancel()
            self._decline(request_id, pending, "the appliance stopped")

    def _expire(self, request_id: str) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.on_outcome(self._decline(request_id, pending,
                                             f"expired: no answer in {self.confirm_s:g} s"))

    def _decline(self, request_id: str, pending: _Pending, reason: str) -> Outcome:
        return self._finish(Outcome(request_id, pending.action.name, pending.args,
                                    pending.source, "declined", "OK, I won't.", reason),
                            pending.started)

    def _finish(self, outcome: Outcome, started: float) -> Outcome:
        outcome = Outcome(**{**outcome.__dict__, "ms": (self.clock() - started) * 1000})
        log.info("action", action=outcome.action, verdict=outcome.verdict,
                 reason=outcome.reason, source=outcome.source)
        record = outcome.record()
        self.publish_record(record)
        for listener in self.record_listeners:
            listener(record)
        return outcome


def _answers(by: str, pending: _Pending) -> bool:
    """Whether a yes or no from ``by`` may answer ``pending``: its own source, or an operator."""
    return by == pending.source or by in OPERATOR_SOURCES

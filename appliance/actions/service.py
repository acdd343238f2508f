"""Proposals to outcomes: verify, then act, confirm when asked to, and keep a record.

Every proposal (a phrase, the model's choice, a rule's, a button, ``appliance
act``) comes here and nowhere else can act. Each one ends in a record on
``<base>/action``: ``{"id", "action", "args", "source", "verdict", "reason",
"needs", "ms"}``, verdict ``done``, ``refused``, ``awaiting_confirmation``,
``declined`` or ``failed``. With ``confirm: true`` the appliance asks first and
waits ``actions_confirm_s`` for yes or no; silence means no.
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
from appliance.logs import get_logger

log = get_logger("actions")


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

    def answer_fields(self) -> dict[str, Any]:
        """What an answer about it carries."""
        fields: dict[str, Any] = {"text": self.text, "tokens": 0, "finish_reason": "stop",
                                  "action": self.action, "verdict": self.verdict}
        if self.needs:
            fields["needs"] = list(self.needs)
        if self.reason:
            fields["reason"] = self.reason
        return fields


@dataclass
class _Pending:
    action: Action
    args: dict[str, Any]
    source: str
    started: float
    timer: asyncio.TimerHandle | None = None
    on_outcome: Callable[[Outcome], None] = field(default=lambda _o: None)


class ActionService:
    """Verifies and carries out proposals; ``publish_record(record)`` sends each record."""

    def __init__(self, verifier: Verifier, executor: Executor,
                 publish_record: Callable[[dict[str, Any]], None], confirm_s: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.verifier, self.executor = verifier, executor
        self.registry = verifier.registry
        self.publish_record = publish_record
        self.confirm_s = confirm_s
        self.clock = clock
        self._pending: dict[str, _Pending] = {}

    def propose(self, request_id: str, name: str, args: Any, source: str, *,
                allowed: Iterable[str] | None = None,
                on_outcome: Callable[[Outcome], None] = lambda _o: None) -> Outcome:
        """Verify ``name(args)`` and act, or ask, or refuse; the outcome is recorded.

        ``on_outcome`` hears the final outcome of an action that waits for a
        confirmation (done, declined, failed).
        """
        started = self.clock()
        args = dict(args) if isinstance(args, dict) else args
        check = self.verifier.check(name, args, source, allowed)
        if not check.ok:
            return self._finish(Outcome(request_id, name, args if isinstance(args, dict) else {},
                                        source, "refused", check.text, check.reason,
                                        check.needs), started)
        action = self.registry.actions[name]
        if action.confirm:
            pending = self._pending[request_id] = _Pending(action, args, source, started,
                                                           on_outcome=on_outcome)
            pending.timer = asyncio.get_running_loop().call_later(
                self.confirm_s, self._expire, request_id)
            label = (action.description or action.name).rstrip(".")
            label = label[0].lower() + label[1:] if label else label
            return self._finish(Outcome(request_id, name, args, source,
                                        "awaiting_confirmation", f"Shall I {label}?",
                                        "waiting for yes or no"), started)
        return self._act(request_id, action, args, source, started)

    def _act(self, request_id: str, action: Action, args: dict[str, Any], source: str,
             started: float) -> Outcome:
        # The requirements are checked once more: a confirmation may come much later.
        check = self.verifier.check(action.name, args, source)
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

    def confirm(self, request_id: str, yes: bool) -> Outcome | None:
        """The answer to "Shall I ...?" for ``request_id``; ``None`` if none waits."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return None
        if pending.timer is not None:
            pending.timer.cancel()
        if yes:
            outcome = self._act(request_id, pending.action, pending.args, pending.source,
                                pending.started)
        else:
            outcome = self._finish(Outcome(request_id, pending.action.name, pending.args,
                                           pending.source, "declined", "OK, I won't.",
                                           "declined"), pending.started)
        pending.on_outcome(outcome)
        return outcome

    def latest_waiting(self) -> str | None:
        """The id of the most recent question still waiting for yes or no."""
        return next(reversed(self._pending), None)

    def _expire(self, request_id: str) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            outcome = self._finish(Outcome(request_id, pending.action.name, pending.args,
                                           pending.source, "declined", "OK, I won't.",
                                           f"no answer in {self.confirm_s:g} s"),
                                   pending.started)
            pending.on_outcome(outcome)

    def _finish(self, outcome: Outcome, started: float) -> Outcome:
        outcome = Outcome(**{**outcome.__dict__, "ms": (self.clock() - started) * 1000})
        log.info("action", action=outcome.action, verdict=outcome.verdict,
                 reason=outcome.reason, source=outcome.source)
        self.publish_record(outcome.record())
        return outcome


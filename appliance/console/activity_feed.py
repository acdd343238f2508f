"""What the Activity page lists: answers and action records as rows, and the open questions.

An :class:`ActivityFeed` listens where the appliance already tells what it
did: the dispatcher's answer listeners (every answer, whatever its entrance:
an error, a rule's alert, an action's outcome) and the action service's
records (every verdict, a ``cmd/act`` button's and a confirmation's too). It
writes each as a row of the journal's activity log, and lists the service's
proposals still waiting for yes or no, which the page can answer.

Toy mode (``voice.kid_safe``) writes nothing a child said or heard: a voice
or Wyoming request's row keeps its kind, source and outcome, never its text
or an action's arguments (as conversations, which toy mode keeps in memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.actions.service import ActionService
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request
from appliance.service.activity_log import Entry, Kind
from appliance.service.dispatcher import Dispatcher
from appliance.service.journal import Journal

PRIVATE = "(toy mode: not kept)"


@dataclass(frozen=True)
class Waiting:
    """A proposal waiting for yes or no: its id (what answers it), and until when (wall clock)."""

    id: str
    action: str
    args: dict[str, Any]
    source: str
    until: float


class ActivityFeed:
    """Answers and action records to activity rows; the questions that wait for yes or no."""

    def __init__(self, journal: Journal, *, kid_safe: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal, self.kid_safe = journal, kid_safe
        self.clock = clock
        self._dispatcher: Dispatcher | None = None
        self._service: ActionService | None = None

    def attach(self, dispatcher: Dispatcher, service: ActionService | None) -> None:
        """Listen to ``dispatcher``'s answers and ``service``'s records (until :meth:`detach`)."""
        dispatcher.answer_listeners.append(self.answered)
        self._dispatcher = dispatcher
        if service is not None:
            service.record_listeners.append(self.acted)
            self._service = service

    def detach(self) -> None:
        """Stop listening."""
        if self._dispatcher is not None and self.answered in self._dispatcher.answer_listeners:
            self._dispatcher.answer_listeners.remove(self.answered)
        if self._service is not None and self.acted in self._service.record_listeners:
            self._service.record_listeners.remove(self.acted)
        self._dispatcher = self._service = None

    def private(self, source: str) -> bool:
        """Toy mode, and a child may be the one talking (voice, Wyoming: cf. the preparation)."""
        return self.kid_safe and source in ("voice", "wyoming")

    def answered(self, request: Request, answer: Answer) -> None:
        """One answer, as a row (a dispatcher answer listener)."""
        kind: Kind = "error" if answer.failed else "rule" if request.source == "sensor" \
            else "answer"
        fields: dict[str, Any] = {"finish_reason": answer.finish_reason, "tokens": answer.tokens}
        if answer.action is not None:
            fields.update(action=answer.action.action, verdict=answer.action.verdict,
                          needs=list(answer.action.needs), reason=answer.action.reason)
        if answer.sources:
            fields["sources"] = list(answer.sources)
        if answer.error is not None:
            fields["error_code"] = str(answer.error.code)
        title, text = request.text, answer.text
        if answer.error is not None:
            text = answer.error.message
        if request.source == "sensor":
            title = f"rule {request.rule}" if request.rule else "rule"
        if self.private(request.entrance):
            title, text, fields["private"] = PRIVATE, "", True
        self.journal.note(Entry(kind, request.entrance, title, text, request.id, fields))

    def acted(self, record: dict[str, Any]) -> None:
        """One action record (``<base>/action``), as a row."""
        request_id, verdict = str(record.get("id", "")), str(record.get("verdict", ""))
        source, action = str(record.get("source", "")), str(record.get("action", ""))
        args = record.get("args") if isinstance(record.get("args"), dict) else {}
        private = self.private(source)
        fields = {"verdict": verdict, "needs": record.get("needs") or [], "ms": record.get("ms")}
        if not private:
            fields["args"] = args
        self.journal.note(Entry("action", source, action, str(record.get("reason", "")),
                                request_id, fields))

    def waiting(self) -> list[Waiting]:
        """The service's questions still open, newest first (none without actions)."""
        if self._service is None:
            return []
        now = self.clock()
        return [Waiting(q.id, q.action, {} if self.private(q.source) else q.args, q.source,
                        now + q.left_s) for q in self._service.waiting()]

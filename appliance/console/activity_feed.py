"""What the Activity page lists: answers and action records as rows, and the open questions.

An :class:`ActivityFeed` listens where the appliance already tells what it
did: the dispatcher's answer listeners (every answer, whatever its entrance:
an error, a rule's alert, an action's outcome) and the action service's
records (every verdict, a ``cmd/act`` button's and a confirmation's too). It
writes each as a row of the journal's activity log, and keeps the proposals
still waiting for yes or no (``awaiting_confirmation`` until their one final
record), which the page can answer.

Toy mode (``voice.kid_safe``) writes nothing a child said or heard: a voice
or Wyoming request's row keeps its kind, source and outcome, never its text
or an action's arguments (as conversations, which toy mode keeps in memory).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.actions.service import ActionService
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request
from appliance.service.activity_log import Entry, Kind
from appliance.service.dispatcher import Dispatcher
from appliance.service.journal import Journal

MAX_WAITING = 100
"""At most this many open questions are listed (the oldest are dropped from the list first)."""
PRIVATE = "(toy mode: not kept)"


@dataclass(frozen=True)
class Waiting:
    """A proposal waiting for yes or no: its id (what answers it), and until when (wall clock)."""

    id: str
    action: str
    args: dict[str, Any]
    source: str
    at: float
    until: float


class ActivityFeed:
    """Answers and action records to activity rows; the questions that wait for yes or no."""

    def __init__(self, journal: Journal, *, kid_safe: bool, confirm_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal, self.kid_safe, self.confirm_s = journal, kid_safe, confirm_s
        self.clock = clock
        self._waiting: OrderedDict[str, Waiting] = OrderedDict()
        self._dispatcher: Dispatcher | None = None
        self._service: ActionService | None = None
        self._publish: Callable[[dict[str, Any]], None] | None = None

    def attach(self, dispatcher: Dispatcher, service: ActionService | None) -> None:
        """Listen to ``dispatcher``'s answers and ``service``'s records (until :meth:`detach`)."""
        dispatcher.answer_listeners.append(self.answered)
        self._dispatcher = dispatcher
        if service is not None:
            publish = self._publish = service.publish_record

            def published(record: dict[str, Any]) -> None:
                publish(record)
                self.acted(record)

            service.publish_record = published
            self._service = service

    def detach(self) -> None:
        """Stop listening."""
        if self._dispatcher is not None and self.answered in self._dispatcher.answer_listeners:
            self._dispatcher.answer_listeners.remove(self.answered)
        if self._service is not None and self._publish is not None:
            self._service.publish_record = self._publish
        self._dispatcher = self._service = self._publish = None

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
        """One action record (``<base>/action``), as a row; it opens or closes a question."""
        request_id, verdict = str(record.get("id", "")), str(record.get("verdict", ""))
        source, action = str(record.get("source", "")), str(record.get("action", ""))
        args = record.get("args") if isinstance(record.get("args"), dict) else {}
        private = self.private(source)
        fields = {"verdict": verdict, "needs": record.get("needs") or [], "ms": record.get("ms")}
        if not private:
            fields["args"] = args
        self.journal.note(Entry("action", source, action, str(record.get("reason", "")),
                                request_id, fields))
        self._waiting.pop(request_id, None)
        if verdict == "awaiting_confirmation":
            now = self.clock()
            self._waiting[request_id] = Waiting(request_id, action, {} if private else args,
                                                source, now, now + self.confirm_s)
            while len(self._waiting) > MAX_WAITING:
                self._waiting.popitem(last=False)

    def waiting(self) -> list[Waiting]:
        """The questions still open, newest first."""
        now = self.clock()
        return [w for w in reversed(self._waiting.values()) if w.until > now]

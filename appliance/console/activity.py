"""The Activity page: what the appliance did lately, and the questions waiting for yes or no.

``GET /activity`` lists the journal's activity log (answers, errors, rule
firings, action records, changes made from the console), newest first, 100
at a time, filtered by ``?source=`` and ``?kind=`` and paged with
``?before=<row id>``; the rows are read on a thread. Above them, the
proposals that wait for yes or no, each with Yes and No buttons for a logged-in
user: ``POST /activity/confirm`` ``{"id", "answer": "yes"|"no"}`` answers
through the action service's one confirmation path, as an operator, like
MQTT's ``cmd/confirm`` (the verifier checks the action again before it acts).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.api.errors import ApiError, Problem, bad_request
from appliance.api.http_body import read_json
from appliance.console.activity_feed import ActivityFeed
from appliance.console.app import View
from appliance.console.roles import Access
from appliance.service.activity_log import KINDS, PAGE, SOURCES, ActivityQuery, Entry
from appliance.service.journal import JournalError

if TYPE_CHECKING:
    from appliance.console.app import Console

CONFIRMER = "mqtt"
"""Who the console answers as: an operator, as ``cmd/confirm`` does, who may answer any question
(``appliance.actions.service.OPERATOR_SOURCES``)."""
ANSWERS = {"yes": True, "no": False}


class Activity(View):
    """The Activity page and its confirmations."""

    def __init__(self, console: Console) -> None:
        self.console = console
        settings = console.parts.settings
        self.feed = ActivityFeed(console.parts.journal, kid_safe=settings.voice.kid_safe)

    def add_routes(self, console: Console) -> None:
        """The page (for viewers) and the confirmation (it acts: a login)."""
        console.add("GET", "/activity", self.page, Access.VIEW)
        console.add("POST", "/activity/confirm", self.confirm, Access.ADMIN)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The rows the query asks for, and the open questions."""
        query = parse_query(request.query)
        try:
            rows = await asyncio.to_thread(self.console.parts.journal.activity, query)
        except JournalError as exc:
            raise ApiError(Problem.UNAVAILABLE, str(exc)) from None
        older = rows[-1].id if len(rows) == query.limit else None
        return self.console.pages.render(request, "activity.html", "Activity", {
            "rows": [row_view(row) for row in rows], "query": query, "older": older,
            "sources": SOURCES, "kinds": KINDS,
            "waiting": [{"id": w.id, "action": w.action, "args": w.args, "source": w.source,
                         "until": _clock(w.until)} for w in self.feed.waiting()]})

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        """Yes or no to a waiting question; 404 when none waits with that id."""
        body = await read_json(request)
        request_id, answer = body.get("id"), body.get("answer")
        if not isinstance(request_id, str) or not request_id.strip():
            raise bad_request("id: expected the id of the action that waits")
        if answer not in ANSWERS:
            raise bad_request('answer: expected "yes" or "no"')
        service = self.console.parts.desk.service
        outcome = service.confirm(request_id, ANSWERS[answer], CONFIRMER) \
            if service is not None else None
        if outcome is None:
            raise ApiError(Problem.NOT_FOUND,
                           f"no action waits for a confirmation with id {request_id[:64]!r}")
        self.console.audit(request, "confirm", f"{answer} to {outcome.action} ({request_id})")
        return web.json_response({"notice": f"{outcome.action}: {outcome.verdict}. "
                                            f"{outcome.text}", "verdict": outcome.verdict})

    def start(self) -> None:
        """Listen to the answers and the action records."""
        self.feed.attach(self.console.gate.dispatcher, self.console.parts.desk.service)

    async def close(self) -> None:
        """Stop listening."""
        self.feed.detach()


def parse_query(params: Any) -> ActivityQuery:
    """``?source=&kind=&before=`` as a query; a value we do not know is a one-line 400."""
    values: dict[str, Any] = {}
    for name, allowed in (("source", SOURCES), ("kind", KINDS)):
        value = params.get(name) or None
        if value is not None and value not in allowed:
            raise bad_request(f"{name}: expected one of {', '.join(allowed)}, got {value[:40]!r}")
        values[name] = value
    before = params.get("before") or None
    if before is not None:
        if not before.isdigit() or len(before) > 18:
            raise bad_request(f"before: expected a row number, got {before[:40]!r}")
        values["before"] = int(before)
    return ActivityQuery(limit=PAGE, **values)


def row_view(row: Entry) -> dict[str, Any]:
    """What the template shows of one row."""
    fields = row.fields
    outcome = fields.get("verdict") or (fields.get("finish_reason") if row.kind != "console"
                                        else fields.get("who", ""))
    return {"id": row.id, "at": _clock(row.at), "iso": _iso(row.at), "kind": row.kind,
            "source": row.source, "title": row.title, "text": row.text, "ref": row.ref,
            "outcome": outcome or "", "needs": fields.get("needs") or [],
            "sources": fields.get("sources") or [], "private": bool(fields.get("private"))}


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(at))

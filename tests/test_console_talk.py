"""The console's Talk and Activity pages, over real parts: milliseconds, no model, no broker.

A :class:`Console` is built from a real journal, status, action desk and
dispatcher, whose generator is a scripted :class:`FakeGenerator`
(tests/console_rig.py); aiohttp's test client talks to the console's server
application as a browser would (logged in: a session is put on each request,
as the security middleware would). The browser tests
(tests/test_console_browser.py) do the same with the real model and broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.console.activity import Activity
from appliance.console.activity_feed import PRIVATE, ActivityFeed
from appliance.console.talk import Talk
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request
from appliance.service.activity_log import MAX_ROWS, ActivityQuery
from appliance.service.journal import Journal
from tests.console_rig import WHO, console_rig, lines, run, serving
from tests.fakes import Reply
from tests.helpers import eventually_async

CONFIG = {"actions": [{"name": "pump", "description": "Run the watering pump",
                       "publish": {"topic": "garden/pump/set", "payload": {"state": "ON"}},
                       "confirm": True}],
          "actions_confirm_s": 60}
PUMP_TOPIC = "garden/pump/set"


def test_a_question_streams_its_chunks_then_the_answer_and_a_follow_up_keeps_the_conversation(
        tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True, script=[
        Reply(('{"answer": "Hel', "lo", ' there"}')), Reply(('{"answer": "Again"}',))])

    async def scenario() -> None:
        async with serving(device) as client:
            response = await client.post("/talk/ask", json={"text": "Say hello"})
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/x-ndjson")
            got = [line async for line in lines(response)]
            started = got[0]["started"]
            assert [line["chunk"] for line in got[1:-1]] == ["Hel", "lo", " there"]
            answer = got[-1]["answer"]
            assert answer["text"] == "Hello there" and answer["finish_reason"] == "stop"
            assert answer["tokens"] == 3 and answer["id"] == started["id"]
            assert answer["conversation"] == started["conversation"]

            response = await client.post("/talk/ask", json={
                "text": "And again?", "conversation": started["conversation"]})
            follow = [line async for line in lines(response)]
            assert follow[-1]["answer"]["conversation"] == started["conversation"]
            history = [(t.role, t.content) for t in device.local.requests[1].history]
            assert ("user", "Say hello") in history and ("assistant", "Hello there") in history

    run(scenario)
    rows = device.journal.activity(ActivityQuery())
    assert [(r.kind, r.source, r.title) for r in rows] == [
        ("answer", "console", "And again?"), ("console", "console", "ask"),
        ("answer", "console", "Say hello"), ("console", "console", "ask")]
    assert rows[3].text == "Say hello" and rows[3].fields["who"] == WHO
    assert rows[2].text == "Hello there"


def test_stop_cancels_the_question_and_the_stream_ends_with_the_cancelled_answer(
        tmp_path: Path) -> None:
    hold = asyncio.Event()
    device = console_rig(tmp_path, CONFIG, as_admin=True, script=[
        Reply(('{"answer": "one', "two", 'three"}'), hold=hold, hold_after=1)])

    async def scenario() -> None:
        async with serving(device) as client:
            response = await client.post("/talk/ask", json={"text": "Count"})
            stream = lines(response)
            request_id = (await anext(stream))["started"]["id"]
            assert (await anext(stream)) == {"chunk": "one"}
            stop = await client.post("/talk/stop", json={"id": request_id})
            assert stop.status == 200 and await stop.json() == {"stopped": True}
            answer = (await anext(stream))["answer"]
            assert answer["finish_reason"] == "cancelled" and answer["text"] == "one"
            assert device.local.cancelled == [request_id]
            again = await client.post("/talk/stop", json={"id": request_id})
            assert await again.json() == {"stopped": False}

    run(scenario)


def test_a_page_that_goes_away_cancels_its_question(tmp_path: Path) -> None:
    hold = asyncio.Event()
    device = console_rig(tmp_path, CONFIG, as_admin=True, script=[
        Reply(('{"answer": "one', 'two"}'), hold=hold, hold_after=1)])

    async def scenario() -> None:
        async with serving(device) as client:
            response = await client.post("/talk/ask", json={"text": "Count"})
            stream = lines(response)
            request_id = (await anext(stream))["started"]["id"]
            await anext(stream)
            response.close()  # the browser aborts the fetch: the connection closes
            await eventually_async(lambda: device.local.cancelled == [request_id], 120,
                                   "the question cancelled")
            await eventually_async(lambda: not device.view(Talk).asking, 120,
                                   "the question forgotten")

    run(scenario)


def test_bad_questions_get_one_line_and_ask_nothing(tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)

    async def scenario() -> None:
        async with serving(device) as client:
            for body, words in (({"text": ""}, "text:"), ({"text": 5}, "text:"),
                                ({}, "text:"), ({"text": "x" * 4001}, "at most 4000"),
                                ({"text": "hi", "conversation": "no spaces"}, "conversation:"),
                                ({"text": "hi", "conversation": 7}, "conversation:")):
                response = await client.post("/talk/ask", json=body)
                error = (await response.json())["error"]
                assert response.status == 400 and words in error and "\n" not in error, body
            response = await client.post("/talk/ask", data=b"{not json",
                                         headers={"Content-Type": "application/json"})
            assert response.status == 400 and "not JSON" in (await response.json())["error"]
            response = await client.post("/talk/stop", json={"id": 3})
            assert response.status == 400 and "id:" in (await response.json())["error"]
            assert device.local.requests == []

    run(scenario)


def test_the_activity_log_is_bounded_newest_first_and_filtered(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    for n in range(MAX_ROWS + 5):
        journal.console_action(WHO, "ask", f"question {n}")
    rows = journal.activity(ActivityQuery(limit=1000))
    assert len(rows) == 100  # one page at most
    assert rows[0].text == f"question {MAX_ROWS + 4}" and rows[0].fields == {"who": WHO}
    assert [r.id for r in rows] == sorted((r.id for r in rows), reverse=True)
    older = journal.activity(ActivityQuery(before=rows[-1].id, limit=5))
    assert [r.id for r in older] == list(range(rows[-1].id - 1, rows[-1].id - 6, -1))
    count = journal._db.execute("SELECT COUNT(*), MIN(id) FROM activity").fetchone()
    assert count == (MAX_ROWS, 6)  # the oldest five are gone
    assert journal.activity(ActivityQuery(kind="answer")) == []
    assert journal.activity(ActivityQuery(source="mqtt")) == []
    assert len(journal.activity(ActivityQuery(kind="console", source="console", limit=3))) == 3


def test_answers_errors_and_records_become_rows_and_toy_mode_keeps_no_words(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    feed = ActivityFeed(journal, kid_safe=True)
    feed.answered(Request("v1", "voice", "my secret"), Answer("v1", "voice", "shh", "stop"))
    feed.answered(Request("m1", "mqtt", "hello"), Answer("m1", "mqtt", "hi", "stop", tokens=1))
    feed.answered(Request("s1", "sensor", "It is 45.", rule="hot"),
                  Answer("s1", "sensor", "Too hot", "stop"))
    feed.answered(Request("w1", "api", "mine too", api="wyoming"),
                  Answer("w1", "api", "", "cancelled"))
    feed.acted({"id": "v2", "action": "pump", "args": {"note": "child words"}, "source": "voice",
                "verdict": "refused", "reason": "no", "needs": ["water"], "ms": 1})
    rows = {r.ref: r for r in journal.activity(ActivityQuery())}
    assert (rows["v1"].kind, rows["v1"].title, rows["v1"].text) == ("answer", PRIVATE, "")
    assert (rows["w1"].source, rows["w1"].title) == ("wyoming", PRIVATE)
    assert (rows["m1"].title, rows["m1"].text) == ("hello", "hi")
    assert (rows["s1"].kind, rows["s1"].title, rows["s1"].text) == ("rule", "rule hot", "Too hot")
    assert rows["v2"].fields["verdict"] == "refused" and "args" not in rows["v2"].fields
    assert rows["v2"].fields["needs"] == ["water"]
    words = journal._db.execute("SELECT group_concat(title || text || fields) FROM activity")
    text = words.fetchone()[0]
    assert "secret" not in text and "mine too" not in text and "child words" not in text


def test_the_page_filters_and_refuses_unknown_filters_in_one_line(tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)
    device.journal.console_action(WHO, "upload", "manual.md")
    device.view(Activity).feed.answered(Request("m1", "mqtt", "hello there"),
                                  Answer("m1", "mqtt", "general kenobi", "stop"))

    async def scenario() -> None:
        async with serving(device) as client:
            page = await (await client.get("/activity")).text()
            assert "hello there" in page and "manual.md" in page
            assert page.index("hello there") < page.index("manual.md")  # newest first
            page = await (await client.get("/activity?kind=console")).text()
            assert "manual.md" in page and "hello there" not in page
            page = await (await client.get("/activity?source=mqtt")).text()
            assert "hello there" in page and "manual.md" not in page
            for query, words in (("kind=nope", "kind: expected one of"),
                                 ("source=x", "source: expected one of"),
                                 ("before=-1", "before: expected")):
                response = await client.get(f"/activity?{query}")
                error = (await response.json())["error"]
                assert response.status == 400 and words in error and "\n" not in error

    run(scenario)


def test_yes_on_the_page_acts_once_through_the_confirmation_path(tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)

    async def scenario() -> None:
        async with serving(device) as client:
            service = device.desk.service
            assert service is not None
            service.propose("ask-1", "pump", {}, "mqtt")  # as a cmd/act of a button would
            service.propose("ask-2", "pump", {}, "voice")  # a spoken one: an operator may answer
            page = await (await client.get("/activity")).text()
            assert 'data-confirm="yes" data-id="ask-1"' in page
            assert 'data-confirm="no" data-id="ask-2"' in page
            response = await client.post("/activity/confirm", json={"id": "ask-1",
                                                                    "answer": "yes"})
            assert response.status == 200 and (await response.json())["verdict"] == "done"
            again = await client.post("/activity/confirm", json={"id": "ask-1", "answer": "yes"})
            assert again.status == 404 and "ask-1" in (await again.json())["error"]
            response = await client.post("/activity/confirm", json={"id": "ask-2",
                                                                    "answer": "no"})
            assert (await response.json())["verdict"] == "declined"
            for body, words in (({"id": "ask-2", "answer": "maybe"}, "answer:"),
                                ({"answer": "yes"}, "id:")):
                response = await client.post("/activity/confirm", json=body)
                assert response.status == 400 and words in (await response.json())["error"]
            page = await (await client.get("/activity")).text()
            assert "data-confirm" not in page

    run(scenario)
    assert device.published(PUMP_TOPIC) == [{"state": "ON"}]  # once
    records = [(r.ref, r.fields["verdict"]) for r in device.journal.activity(
        ActivityQuery(kind="action"))]
    assert records == [("ask-2", "declined"), ("ask-1", "done"),
                       ("ask-2", "awaiting_confirmation"), ("ask-1", "awaiting_confirmation")]
    audits = [r.text for r in device.journal.activity(ActivityQuery(kind="console"))]
    assert audits == ["no to pump (ask-2)", "yes to pump (ask-1)"]

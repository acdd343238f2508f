"""The supervisor's small parts: journal, work queue, rate limiter, chunk batching."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.config import parse_settings
from appliance.generate.local import ModelWorker
from appliance.llm import Chunk
from appliance.llm.batching import EAGER_CHUNKS, ChunkBatcher
from appliance.mqtt.bridge import Bridge
from appliance.mqtt.contract import Topics
from appliance.protocol.messages import Outgoing, Request
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher
from appliance.service.journal import Journal
from appliance.service.ratelimit import RateLimiter
from appliance.service.router import Router
from appliance.service.status import Status
from appliance.service.work_queue import WorkQueue


def test_journal_survives_reopening_and_answers_atomically(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    request = Request(id="r1", source="mqtt", text="hi", reply_topic="x/y",
                      correlation=b"\x00\x01")
    assert journal.add(request)
    assert not journal.add(request)  # same id: ignored
    journal.count_attempt("r1")
    journal.close()
    journal = Journal(path)
    (restored,) = journal.pending()
    assert restored == Request(id="r1", source="mqtt", text="hi", reply_topic="x/y",
                               correlation=b"\x00\x01", attempts=1)
    (key,) = journal.answer("r1", [Outgoing("x/y", b"answer", correlation=b"\x00\x01")])
    assert journal.pending() == []
    assert journal.outbox() == [(key, Outgoing("x/y", b"answer", correlation=b"\x00\x01"))]
    journal.delivered(key)
    assert journal.outbox() == []


def test_work_queue_priority_fifo_and_front() -> None:
    async def scenario() -> list[str]:
        queue = WorkQueue()
        queue.put(Request(id="s1", source="sensor", text="", rule="r"))
        queue.put(Request(id="a1", source="mqtt", text=""))
        queue.put(Request(id="a2", source="mqtt", text=""))
        queue.put(Request(id="v1", source="voice", text=""))
        queue.put(Request(id="a0", source="mqtt", text=""), front=True)
        assert queue.queued_for_rule("r") is not None
        assert queue.remove("a2") is not None
        return [(await queue.get()).id for _ in range(len(queue))]

    assert asyncio.run(scenario()) == ["v1", "a0", "a1", "s1"]


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")
    now[0] = 30.0  # one token back after half a minute
    assert limiter.allow("a") and not limiter.allow("a")


def test_chunk_batcher_first_words_at_once_then_by_interval_and_sentence() -> None:
    now = [0.0]
    out: list[Chunk] = []
    batcher = ChunkBatcher(out.append, 0.1, clock=lambda: now[0])
    first = [f"w{i} " for i in range(EAGER_CHUNKS)]
    for delta in first:
        batcher.add(Chunk("r", 0, delta))
    for t, delta in [(0.01, "lo"), (0.02, " wor"), (0.05, "ld."),
                     (0.06, " Bye"), (0.2, " now"), (0.21, "!")]:
        now[0] = t
        batcher.add(Chunk("r", 0, delta))
    batcher.flush()
    assert [c.delta for c in out] == [*first, "lo world.", " Bye now", "!"]
    assert [c.seq for c in out] == list(range(EAGER_CHUNKS + 3))


def test_rule_events_coalesce_while_queued_latest_wins(tmp_path: Path) -> None:
    settings = parse_settings(
        f"data_dir: {tmp_path}\nrules:\n  - name: hot\n    source: greenhouse\n"
        "    when: temperature > 40\n    prompt: It is {temperature} degrees.\n")
    topics = Topics.under(settings.base_topic)

    async def scenario() -> None:
        journal = Journal(tmp_path / "j.sqlite3")
        dispatcher = Dispatcher(
            router=Router(ModelWorker(None)), journal=journal, topics=topics,
            outlet=Bridge(settings, journal, [], lambda _m: None),  # never started: no broker
            rules=RuleSet(settings.rules, settings.base_topic), status=Status(), queue_size=4,
            stream=False, llm=settings.llm)
        topic = topics.event("greenhouse")
        assert dispatcher.on_event(topic, {"temperature": 45}) == 1
        for t in range(46, 60):
            assert dispatcher.on_event(topic, {"temperature": t}) == 0
        (pending,) = journal.pending()
        assert pending.text == "It is 59 degrees."
        assert len(dispatcher.queue) == 1
        assert (await dispatcher.queue.get()).text == "It is 59 degrees."
        journal.close()

    asyncio.run(scenario())

"""The supervisor's small parts: journal, work queue, rate limiter, chunk batching."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.llm import Chunk
from appliance.llm.batching import ChunkBatcher
from appliance.service.journal import Journal
from appliance.service.ratelimit import RateLimiter
from appliance.service.requests import Outgoing, Request
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


def test_chunk_batcher_first_at_once_then_by_interval_and_sentence() -> None:
    now = [0.0]
    out: list[Chunk] = []
    batcher = ChunkBatcher(out.append, 0.1, clock=lambda: now[0])
    for t, delta in [(0.0, "Hel"), (0.01, "lo"), (0.02, " wor"), (0.05, "ld."),
                     (0.06, " Bye"), (0.2, " now"), (0.21, "!")]:
        now[0] = t
        batcher.add(Chunk("r", 0, delta))
    batcher.flush()
    assert [c.delta for c in out] == ["Hel", "lo world.", " Bye now", "!"]
    assert [c.seq for c in out] == [0, 1, 2, 3]

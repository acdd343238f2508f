"""``appliance run`` with ``llm.parallel: 2``: two HTTP streams are decoded together, end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from appliance.bench.broker import free_port
from tests.helpers import MODEL, LazyModule, keep_notify_drained
from tests.services import ApplianceProcess

openai = LazyModule("openai")

QUESTIONS = ("Tell me a very long story about a dragon.", "Tell me a long story about a ship.")


async def _stream(client: openai.AsyncOpenAI, question: str) -> tuple[list[float], str, str]:
    """Chunk arrival times, the text, and the finish reason of one streamed answer."""
    times: list[float] = []
    parts: list[str] = []
    finish = ""
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=48,
        stream=True)
    async for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            times.append(time.monotonic())
            parts.append(choice.delta.content)
        finish = choice.finish_reason or finish
    return times, "".join(parts), finish


@pytest.mark.slow
def test_two_streams_are_answered_together(start: Callable[..., ApplianceProcess]) -> None:
    """The second answer's first words come while the first is still streaming.

    One at a time (``parallel: 1``), the second would start only after the first's
    48 tokens; decoded together, both stream at once and both end as asked.
    """
    port = free_port()
    app = start({"llm": {"parallel": 2, "stream_interval_ms": 0},
                 "api": {"http": {"listen": f"127.0.0.1:{port}"}}})
    keep_notify_drained(app)

    async def both() -> list[tuple[list[float], str, str]]:
        # closed on this loop: left to the garbage collector, the client's close would run
        # after asyncio.run had closed the loop, and log an error into a later test
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                      max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(_stream(client, q) for q in QUESTIONS))

    (first, text_a, finish_a), (second, text_b, finish_b) = asyncio.run(both())
    assert text_a and text_b and {finish_a, finish_b} <= {"length", "stop"}
    earlier, later = sorted((first, second), key=lambda times: times[0])
    assert later[0] < earlier[-1], "the second answer waited for the first to end"

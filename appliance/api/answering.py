"""One generation as an HTTP API sees it: text deltas, then the outcome.

:func:`deltas` turns a :class:`~appliance.api.gate.Pending` request into the
text a client should see (with tools, the answer inside the constrained JSON
reply, not the JSON itself) and ends with a :class:`Final`. An answer that
could not be generated raises its :class:`~appliance.api.errors.ApiError`.
A streaming route waits for the first of these before it sends anything, so
that an error that comes first still gets its own status code, not a broken
``200`` stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiohttp import web

from appliance.api.errors import ApiError
from appliance.api.gate import Pending, check_answer
from appliance.api.tools import Reply, ReplyStream
from appliance.llm import Chunk
from appliance.logs import get_logger
from appliance.protocol.answer import Answer

log = get_logger("http_api")


@dataclass(frozen=True)
class Final:
    """How a generation ended: its answer and what the model replied."""

    answer: Answer
    reply: Reply

    @property
    def finish(self) -> Literal["stop", "length", "tool_calls"]:
        """The finish reason as both APIs name it."""
        if self.reply.call is not None:
            return "tool_calls"
        return "length" if self.answer.finish_reason in ("length", "throttled") else "stop"


async def deltas(pending: Pending, tools: bool) -> AsyncIterator[str | Final]:
    """The client-visible text as it streams, then the :class:`Final`."""
    reader = ReplyStream() if tools else None
    async for event in pending.events():
        if isinstance(event, Chunk):
            text = reader.feed(event.delta) if reader is not None else event.delta
            if text:
                yield text
            continue
        check_answer(event)
        text = event.text
        yield Final(event, reader.finish(text) if reader is not None else Reply(text))


async def collect(stream: AsyncIterator[str | Final]) -> Final:
    """Wait for the outcome (non-streamed responses)."""
    async for event in stream:
        if isinstance(event, Final):
            return event
    raise AssertionError("deltas() always ends with a Final")


class Encoder(Protocol):
    """How one API writes a generation: whole, or as a stream of lines."""

    content_type: str

    def opening(self) -> list[bytes]:
        """What a stream starts with, once the first text (or the outcome) is there."""

    def delta(self, text: str) -> bytes:
        """One piece of streamed text."""

    def closing(self, final: Final) -> list[bytes]:
        """The end of a stream."""

    def whole(self, final: Final) -> dict[str, Any]:
        """The non-streamed response."""

    def failure(self, error: ApiError) -> bytes:
        """An error after the stream has begun (its status code is already 200)."""


async def respond(request: web.Request, pending: Pending, encoder: Encoder, *, tools: bool,
                  stream: bool) -> web.StreamResponse:
    """Answer ``request`` with ``pending``'s generation; a client that goes away cancels it."""
    events = deltas(pending, tools)
    response: web.StreamResponse | None = None
    try:
        if not stream:
            return web.json_response(encoder.whole(await collect(events)))
        event = await anext(events)  # an error before any text keeps its own status code
        response = web.StreamResponse(headers={"Content-Type": encoder.content_type,
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            lines = encoder.opening()
            while not isinstance(event, Final):
                lines.append(encoder.delta(event))
                for line in lines:
                    await response.write(line)
                lines = []
                event = await anext(events)
            lines += encoder.closing(event)
        except ApiError as exc:
            lines = [encoder.failure(exc)]
        for line in lines:
            await response.write(line)
        await response.write_eof()
        return response
    except ConnectionResetError:  # the client left; its generation is cancelled below
        log.info("client_gone", id=pending.request.id, client=pending.request.client)
        return response if response is not None else web.Response(status=499)
    finally:
        pending.cancel()

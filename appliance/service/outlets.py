"""The outlets: where one request's chunks and final answer go, all in the same shape.

MQTT (the answer through the outbox, the chunks on ``answer/stream``), the
speaker for voice, the waiter of an API request (a :class:`Watcher`), and
anyone listening for answers (metrics). Toy mode keeps a voice conversation on
the device: it is spoken, never published. A thinking model's thought is never
the answer: with ``llm.publish_thinking`` it goes on ``<base>/answer/thinking``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from appliance.llm import Chunk
from appliance.logs import get_logger
from appliance.mqtt.contract import Topics
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Outgoing, Request

log = get_logger("dispatcher")


class Outlet(Protocol):
    """Where MQTT messages go (the bridge)."""

    def publish(self, message: Outgoing) -> None:
        """Send now, best effort (stream chunks)."""

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        """Retire ``request_id`` and send ``messages`` through the outbox."""


class VoiceOut(Protocol):
    """Where voice answers are spoken (the speaker)."""

    def feed(self, request_id: str, delta: str) -> None:
        """Answer text as it streams."""

    def finish(self, request_id: str) -> None:
        """The answer is complete."""

    def restart(self, request_id: str) -> None:
        """What was fed so far is void (a rerouted answer starts over): cut it."""


class Watcher(Protocol):
    """Someone waiting for one request's chunks and answer (an API client)."""

    def chunk(self, chunk: Chunk) -> None:
        """Answer text as it streams."""

    def answer(self, answer: Answer) -> None:
        """The final answer."""

    def restart(self) -> None:
        """The text streamed so far is void; the next chunks start it over."""


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


class Outlets:
    """Every way out for answers; ``stream(request)`` makes one request's chunk stream."""

    def __init__(self, outlet: Outlet, topics: Topics, *, stream: bool, kid_safe: bool,
                 device_id: str, speaker: VoiceOut | None = None,
                 publish_thinking: bool = False) -> None:
        self.outlet, self.topics = outlet, topics
        self.publish_thinking = publish_thinking
        self.publish_chunks, self.kid_safe, self.device_id = stream, kid_safe, device_id
        self.speaker = speaker  # where voice answers are spoken
        self.listeners: list[Callable[[Request, Answer], None]] = []
        self.watchers: dict[str, Watcher] = {}
        self.streamed: dict[str, int] = {}  # request id -> chunks published so far

    def private(self, request: Request) -> bool:
        """Toy mode: nothing of a voice conversation leaves the device."""
        return request.source == "voice" and self.kid_safe

    def stream(self, request: Request) -> RequestStream:
        """The chunk stream of ``request`` (``seq`` continues across its attempts)."""
        return RequestStream(self, request,
                             publish=self.publish_chunks and not self.private(request)
                             and request.source in ("mqtt", "voice"))

    def say(self, request: Request, text: str) -> None:
        """Speak ``text`` about a voice request (an action's outcome)."""
        if request.source == "voice" and self.speaker is not None:
            self.speaker.feed(request.id, text)
            self.speaker.finish(request.id)

    def answer(self, request: Request, answer: Answer, default_topic: str) -> None:
        """Hand the final ``answer`` to every outlet; MQTT retires the journaled request."""
        self.streamed.pop(request.id, None)
        if request.source == "voice" and self.speaker is not None:
            self.speaker.finish(request.id)
        watcher = self.watchers.pop(request.id, None)
        if watcher is not None:
            watcher.answer(answer)
        for listener in self.listeners:
            listener(request, answer)
        if request.source != "api":
            messages = [] if self.private(request) else [Outgoing(
                request.reply_topic or default_topic, _json(answer.to_json()),
                correlation=request.correlation)]
            if messages and self.publish_thinking and answer.thinking:
                messages.append(self._thought(answer))
            self.outlet.deliver(request.id, messages)
        log.info("answer_ready", finish_reason=answer.finish_reason, tokens=answer.tokens,
                 topic=request.reply_topic or default_topic)


    def _thought(self, answer: Answer) -> Outgoing:
        """The answer's thought, for ``<base>/answer/thinking``."""
        done = answer.completion
        return Outgoing(f"{self.topics.answer}/thinking", _json({
            "id": answer.id, "thinking": answer.thinking, "source": answer.source,
            "thinking_tokens": done.thinking_tokens if done is not None else 0,
            "thinking_ms": round(done.thinking_ms, 1) if done is not None else 0.0,
            "device_id": answer.device_id}))


class RequestStream:
    """One request's chunks to every outlet: MQTT stream, speaker, API watcher.

    ``seq`` keeps counting across attempts; the first chunk after
    :meth:`restart` (a retried or rerouted generation) says ``"restart": true``.
    """

    def __init__(self, outlets: Outlets, request: Request, *, publish: bool) -> None:
        self.outlets, self.request, self.publish = outlets, request, publish
        self.speaker = outlets.speaker if request.source == "voice" else None
        self.watcher = outlets.watchers.get(request.id)
        self._restart = False
        if outlets.streamed.get(request.id, 0) > 0:  # a retried attempt starts over
            self.restart()

    def restart(self) -> None:
        """What was streamed so far is void: the next chunk starts the text over."""
        self._restart = True
        if self.speaker is not None:
            self.speaker.restart(self.request.id)
        if self.watcher is not None:
            self.watcher.restart()

    def __call__(self, chunk: Chunk) -> None:
        outlets, request = self.outlets, self.request
        seq = outlets.streamed.get(request.id, 0)
        outlets.streamed[request.id] = seq + 1
        if self.publish:
            body: dict[str, Any] = {"id": request.id, "seq": seq, "delta": chunk.delta}
            if self._restart:
                body["restart"] = True
            outlets.outlet.publish(Outgoing(outlets.topics.stream, _json(body)))
        self._restart = False
        if self.speaker is not None:
            self.speaker.feed(request.id, chunk.delta)
        if self.watcher is not None:
            self.watcher.chunk(chunk)

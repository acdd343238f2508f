"""A bigger appliance elsewhere, asked over MQTT v5 request/response.

The question goes to the other appliance's ``.../ask`` with our Response Topic
(``<base>/reply/escalation/<id>``, the area every appliance's topic policy
leaves open for replies) and Correlation Data, and ``"tier": "local"`` so that
it never escalates further. Its chunks come on its ``.../answer/stream`` and
its answer on our reply topic. No chunk within ``first_token_timeout_s``, or
no answer within ``timeout_s``, raises :class:`GeneratorUnavailable`. Its
answer is cut at our own budget (:class:`~appliance.generate.base.AnswerCap`),
and its error text is never repeated: a failure says only that it failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from appliance.generate.base import AnswerCap, GeneratorUnavailable, Tier
from appliance.llm.types import ChatRequest, Chunk, Completion, OnChunk
from appliance.protocol.messages import Outgoing

MAX_REPLY_BYTES = 1 << 20
"""A chunk or answer larger than this is not read (a whole answer at 32768 tokens is less)."""


class _Call:
    def __init__(self, on_chunk: OnChunk | None, cap: AnswerCap) -> None:
        self.on_chunk = on_chunk
        self.cap = cap
        self.first = asyncio.Event()
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.parts: list[str] = []


class MqttGenerator:
    """Asks the appliance whose ask topic is ``ask_topic``; ``publish`` sends our messages."""

    tier: Tier = "remote"

    def __init__(self, ask_topic: str, reply_base: str, publish: Callable[[Outgoing], None],
                 *, first_token_timeout_s: float, timeout_s: float) -> None:
        self.ask_topic = ask_topic
        base = ask_topic.removesuffix("/ask")
        self.stream_topic = f"{base}/answer/stream"
        self.cancel_topic = f"{base}/cmd/cancel"
        self.reply_base = f"{reply_base}/escalation"
        self.publish = publish
        self.first_token_timeout_s, self.timeout_s = first_token_timeout_s, timeout_s
        self._calls: dict[str, _Call] = {}
        self._budget: int | None = None

    @property
    def name(self) -> str:
        """The remote appliance, by its ask topic."""
        return f"mqtt:{self.ask_topic}"

    @property
    def subscriptions(self) -> list[str]:
        """Where its replies come."""
        return self.reply_topics(self.ask_topic, self.reply_base.removesuffix("/escalation"))

    @staticmethod
    def reply_topics(ask_topic: str, reply_base: str) -> list[str]:
        """The :attr:`subscriptions` of a generator built with these (known before it is)."""
        return [f"{reply_base}/escalation/+", f"{ask_topic.removesuffix('/ask')}/answer/stream"]

    def handles(self, topic: str) -> bool:
        """Whether an inbound message on ``topic`` is for us."""
        return topic == self.stream_topic or topic.startswith(self.reply_base + "/")

    def on_message(self, topic: str, payload: bytes) -> None:
        """A chunk or an answer (anything else on these topics, or larger, is ignored)."""
        if len(payload) > MAX_REPLY_BYTES:
            return
        try:
            body = json.loads(payload)
            call = self._calls.get(str(body.get("id")))
        except (ValueError, AttributeError, RecursionError):
            return
        if call is None:
            return
        if topic == self.stream_topic:
            delta = body.get("delta")
            if isinstance(delta, str) and delta and call.cap.cut is None:
                call.first.set()
                delta = call.cap.take(delta)
                if delta:
                    call.parts.append(delta)
                    if call.on_chunk is not None:
                        call.on_chunk(Chunk(str(body["id"]), len(call.parts) - 1, delta))
                if call.cap.cut is not None:
                    self.cancel(str(body["id"]))
        elif not call.done.done():
            call.first.set()
            call.done.set_result(body)

    async def generate(self, request: ChatRequest, on_chunk: OnChunk | None = None,
                       ) -> Completion:
        """Ask the other appliance; raises :class:`GeneratorUnavailable` when it is silent."""
        cap = AnswerCap(request.max_tokens, lambda: self._budget)
        call = self._calls[request.id] = _Call(on_chunk, cap)
        started = time.monotonic()
        ask = {"id": request.id, "text": request.text, "tier": "local"}
        if request.max_tokens:
            ask["max_tokens"] = request.max_tokens
        try:
            self.publish(Outgoing(self.ask_topic, json.dumps(ask, ensure_ascii=False).encode(),
                                  response_topic=f"{self.reply_base}/{request.id}",
                                  correlation=request.id.encode()))
            try:
                await asyncio.wait_for(call.first.wait(), self.first_token_timeout_s)
                body = await asyncio.wait_for(call.done, max(
                    0.0, self.timeout_s - (time.monotonic() - started)))
            except TimeoutError:
                raise GeneratorUnavailable(f"{self.ask_topic}: no answer in time") from None
        finally:
            self._calls.pop(request.id, None)
        if body.get("finish_reason") == "error":  # its text is never repeated
            raise GeneratorUnavailable(f"{self.ask_topic}: the remote appliance failed")
        return _completion(request, body, call, self.name, time.monotonic() - started)

    def cancel(self, request_id: str) -> None:
        """Cancel it on the other appliance; its answer then says ``cancelled``."""
        if request_id in self._calls:
            self.publish(Outgoing(self.cancel_topic, json.dumps({"id": request_id}).encode()))

    def set_budget(self, tokens: int | None) -> None:
        """A live cap: the remote answer is cancelled once this many chunks have come."""
        self._budget = tokens


def _completion(request: ChatRequest, body: dict[str, Any], call: _Call, name: str,
                took_s: float) -> Completion:
    """The remote appliance's answer, cut at our budget, with its numbers checked."""
    cap, finish = call.cap, body.get("finish_reason")
    if cap.cut is not None:  # we cut its stream (and cancelled it): what we streamed
        text, finish = "".join(call.parts).strip(), cap.cut
    else:  # it did not stream, or stayed within the budget: its text, within the bytes
        whole = body.get("text") if isinstance(body.get("text"), str) else ""
        once = AnswerCap(cap.limit, cap.budget)
        text = once.take(whole)
        if text != whole:
            finish = once.cut
        elif finish not in ("stop", "length", "throttled", "cancelled"):
            finish = "stop"
    return Completion(
        id=request.id, text=text, finish_reason=finish,
        tokens=min(_number(body.get("tokens"), int, 0), cap.limit),
        ttft_ms=_number(body.get("ttft_ms"), float, 0.0),
        tokens_per_s=_number(body.get("tokens_per_s"), float, 0.0),
        model=str(body.get("model") or name)[:200], total_ms=took_s * 1000)


def _number(value: object, kind: type[int] | type[float], default: float) -> Any:
    """``value`` as ``kind`` if it is a plain finite number, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or abs(value) == float("inf"):
        return kind(default)
    return kind(value)

"""A bigger model elsewhere, behind an OpenAI-compatible HTTP API (llama-server, vLLM, Ollama).

``POST {endpoint}/chat/completions`` with ``stream: true``; the answer comes as
server-sent events, ``data: {chunk}`` lines until ``data: [DONE]``. Only the
system prompt and the question leave the device.

The server is not trusted to behave. Its first token must come within
``first_token_timeout_s`` of the request and the whole answer within
``timeout_s`` (deadlines from the request, so keep-alive comments buy no
time); each event must have the shape of a chat completion chunk; a line
may not pass :data:`MAX_LINE_BYTES`; the answer is cut at the local budget
(:class:`~appliance.generate.base.AnswerCap`). Anything else raises
:class:`GeneratorUnavailable`, and the router answers locally. Its error
texts are never repeated (they can quote our API key): a failure says only
``upstream answered 401 (auth)`` or what went wrong in our own words.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from appliance.generate.base import (
    AnswerCap,
    GenerationFailed,
    GeneratorUnavailable,
    Tier,
)
from appliance.llm.types import ChatRequest, Chunk, Completion, FinishReason, OnChunk
from appliance.logs import get_logger

log = get_logger("remote")

MAX_LINE_BYTES = 256 * 1024
"""The longest server-sent-event line read; a longer one is a broken server, not an answer."""

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "tool_calls": "stop",
                                    "content_filter": "stop"}
_STATUS_CLASS = {400: "bad request", 401: "auth", 403: "auth", 404: "not found",
                 408: "timeout", 413: "too large", 429: "rate limited"}


class _Malformed(ValueError):
    """The server's stream is not what an OpenAI-compatible server sends."""


@dataclass(frozen=True)
class _Event:
    """What one ``data:`` chunk says, checked."""

    delta: str
    finish: str | None
    model: str | None
    completion_tokens: int | None


class OpenAIGenerator:
    """Streams completions from ``endpoint`` (``.../v1``) as model ``model``."""

    tier: Tier = "remote"

    def __init__(self, endpoint: str, model: str, api_key: str | None, *,
                 first_token_timeout_s: float, timeout_s: float) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.first_token_timeout_s = min(first_token_timeout_s, timeout_s)
        self.timeout_s = timeout_s
        # identity: a compressed stream could inflate without bound before we see a line
        headers = {"Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(
            timeout_s, connect=first_token_timeout_s, read=first_token_timeout_s))
        self._running: dict[str, asyncio.Task[Completion]] = {}
        self._cancelled: set[str] = set()
        self._budget: int | None = None

    @property
    def name(self) -> str:
        """The remote model's name."""
        return self.model

    async def generate(self, request: ChatRequest, on_chunk: OnChunk | None = None,
                       ) -> Completion:
        """Stream ``request`` from the server; raises :class:`GeneratorUnavailable` on failure."""
        parts: list[str] = []
        started = time.monotonic()
        task = asyncio.ensure_future(self._stream(request, on_chunk, parts, started))
        self._running[request.id] = task
        try:
            return await task
        except asyncio.CancelledError:
            if request.id not in self._cancelled:
                raise  # we ourselves are being cancelled
            return _done(request, self.model, parts, "cancelled", started, None, None)
        finally:
            self._running.pop(request.id, None)
            self._cancelled.discard(request.id)

    async def _stream(self, request: ChatRequest, on_chunk: OnChunk | None,
                      parts: list[str], started: float) -> Completion:
        body: dict[str, Any] = {
            "model": self.model, "stream": True, "messages": _messages(request),
            "max_tokens": _cap(request.max_tokens, self._budget),
        }
        temperature = request.sampling.temperature
        if temperature is not None:
            body["temperature"] = temperature
        if request.stop:
            body["stop"] = list(request.stop)
        cap = AnswerCap(request.max_tokens, lambda: self._budget)
        first_at: float | None = None
        finish: FinishReason = "stop"
        usage_tokens: int | None = None
        model = self.model
        loop = asyncio.get_running_loop()
        try:
            # The first token is due first_token_timeout_s after the request, the end
            # timeout_s after it: keep-alive comments or empty chunks do not move either.
            async with asyncio.timeout(self.first_token_timeout_s) as deadline, \
                    self._client.stream("POST", f"{self.endpoint}/chat/completions",
                                        json=body) as response:
                if response.status_code != 200:
                    raise GeneratorUnavailable(_status(response.status_code))
                async for event in _events(response):
                    model = event.model or model
                    usage_tokens = event.completion_tokens or usage_tokens
                    delta = cap.take(event.delta) if event.delta else ""
                    if delta:
                        if first_at is None:
                            first_at = time.monotonic()
                            deadline.reschedule(loop.time() + self.timeout_s
                                                - (first_at - started))
                        if on_chunk is not None:
                            on_chunk(Chunk(request.id, len(parts), delta))
                        parts.append(delta)
                    if event.finish:
                        finish = _FINISH.get(event.finish, "stop")
                    if cap.cut is not None:
                        finish = cap.cut
                        break  # leaving the block closes the connection
        except TimeoutError:
            raise GeneratorUnavailable(
                f"no first token within {self.first_token_timeout_s:g} s" if first_at is None
                else f"no complete answer within {self.timeout_s:g} s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise GeneratorUnavailable("the server cannot be reached") from None
        except httpx.TimeoutException:
            raise GeneratorUnavailable("the server stalled") from None
        except httpx.HTTPError as exc:  # its text can quote the server's bytes: the class only
            raise GeneratorUnavailable(f"the connection failed ({type(exc).__name__})") from None
        except _Malformed as exc:
            raise GeneratorUnavailable(f"the server's stream is malformed: {exc}") from None
        if not parts:
            raise GenerationFailed("the server sent an empty answer")
        return _done(request, model, parts, finish, started, first_at,
                     None if cap.cut else usage_tokens)

    def cancel(self, request_id: str) -> None:
        """Stop reading the stream (the server sees the connection close)."""
        task = self._running.get(request_id)
        if task is not None:
            self._cancelled.add(request_id)
            task.cancel()

    def set_budget(self, tokens: int | None) -> None:
        """A live cap on the answer (heat shortens remote answers too)."""
        self._budget = tokens

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()


def _status(code: int) -> str:
    """A refusal in our words: a status and its class, never the server's text."""
    kind = _STATUS_CLASS.get(code) or ("server error" if code >= 500 else "refused")
    return f"upstream answered {code} ({kind})"


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    """The system prompt and the question: nothing else leaves the device."""
    messages = [{"role": "user", "content": request.text}]
    if request.system_prompt:
        messages.insert(0, {"role": "system", "content": request.system_prompt})
    return messages


def _cap(limit: int | None, budget: int | None) -> int | None:
    caps = [n for n in (limit, budget) if n is not None]
    return min(caps) if caps else None


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response's lines, none longer than :data:`MAX_LINE_BYTES` (held in memory)."""
    pending = bytearray()
    async for data in response.aiter_raw():
        pending += data
        while (end := pending.find(b"\n")) >= 0:
            if end > MAX_LINE_BYTES:
                break
            line = bytes(pending[:end])
            del pending[:end + 1]
            yield line.rstrip(b"\r")
        if len(pending) > MAX_LINE_BYTES:
            raise _Malformed(f"a line longer than {MAX_LINE_BYTES} bytes")
    if pending:
        yield bytes(pending)


async def _events(response: httpx.Response) -> AsyncIterator[_Event]:
    """The checked chunks of an SSE stream's ``data:`` lines, until ``[DONE]``."""
    async for line in _lines(response):
        if not line.startswith(b"data:"):
            continue  # blank lines end events, ":" lines are comments
        data = line[5:].strip()
        if data.startswith(b"[DONE]"):
            return
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            raise _Malformed("an event is not JSON") from None
        yield _checked(event)


def _checked(event: object) -> _Event:
    """One chunk, if it has the shape of ``chat.completion.chunk``; :class:`_Malformed` if not."""
    if not isinstance(event, dict):
        raise _Malformed("an event is not a JSON object")
    if "error" in event:
        raise _Malformed("the server reported an error mid-answer")
    choices = event.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list) or any(not isinstance(c, dict) for c in choices):
        raise _Malformed("'choices' is not a list of objects")
    choice = choices[0] if choices else {}
    delta = choice.get("delta")
    if delta is None:
        delta = {}
    if not isinstance(delta, dict):
        raise _Malformed("'delta' is not an object")
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        raise _Malformed("'delta.content' is not text")
    finish = choice.get("finish_reason")
    usage = event.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    model = event.get("model")
    return _Event(content or "", finish if isinstance(finish, str) else None,
                  model[:200] if isinstance(model, str) and model else None,
                  tokens if type(tokens) is int and tokens > 0 else None)


def _done(request: ChatRequest, model: str, parts: list[str], finish: FinishReason,
          started: float, first_at: float | None, tokens: int | None) -> Completion:
    ended = time.monotonic()
    first = first_at or ended
    n = tokens or len(parts)
    return Completion(
        id=request.id, text="".join(parts).strip(), tokens=n, finish_reason=finish,
        ttft_ms=(first - started) * 1000, model=model, total_ms=(ended - started) * 1000,
        tokens_per_s=(n - 1) / (ended - first) if n > 1 and ended > first else 0.0)

"""A bigger model elsewhere, behind an OpenAI-compatible HTTP API (llama-server, vLLM, Ollama).

``POST {endpoint}/chat/completions`` with ``stream: true``; the answer comes as
server-sent events, ``data: {chunk}`` lines until ``data: [DONE]``. Only the
system prompt and the question leave the device. A server that does not
start answering within ``first_token_timeout_s``, or fails or stalls later,
raises :class:`GeneratorUnavailable`, and the router answers locally.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from appliance.generate.base import GenerationFailed, GeneratorUnavailable, OnChunk, Tier
from appliance.llm.types import ChatRequest, Chunk, Completion, FinishReason
from appliance.logs import get_logger

log = get_logger("remote")

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "tool_calls": "stop",
                                    "content_filter": "stop"}


class OpenAIGenerator:
    """Streams completions from ``endpoint`` (``.../v1``) as model ``model``."""

    tier: Tier = "remote"

    def __init__(self, endpoint: str, model: str, api_key: str | None, *,
                 first_token_timeout_s: float, timeout_s: float) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self.first_token_timeout_s = first_token_timeout_s
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
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
        first_at: float | None = None
        finish: FinishReason = "stop"
        usage_tokens: int | None = None
        model = self.model
        try:
            async with asyncio.timeout(self.timeout_s), self._client.stream(
                    "POST", f"{self.endpoint}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")[:200]
                    raise GeneratorUnavailable(f"the server answered HTTP "
                                               f"{response.status_code}: {text}")
                async for data in _events(response):
                    choice = (data.get("choices") or [{}])[0]
                    delta = (choice.get("delta") or {}).get("content") or ""
                    model = data.get("model") or model
                    if data.get("usage"):
                        usage_tokens = data["usage"].get("completion_tokens")
                    if delta:
                        first_at = first_at or time.monotonic()
                        if on_chunk is not None:
                            on_chunk(Chunk(request.id, len(parts), delta))
                        parts.append(delta)
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], "stop")
                    if self._budget is not None and len(parts) >= self._budget:
                        finish = "throttled"
                        break
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            why = "no answer in time" if isinstance(exc, TimeoutError | httpx.TimeoutException) \
                else f"{type(exc).__name__}: {exc}"
            raise GeneratorUnavailable(f"{self.endpoint}: {why}") from None
        if not parts:
            raise GenerationFailed(f"{self.endpoint}: the server sent an empty answer")
        return _done(request, model, parts, finish, started, first_at, usage_tokens)

    def cancel(self, request_id: str) -> None:
        """Stop reading the stream (the server sees the connection close)."""
        task = self._running.get(request_id)
        if task is not None:
            self._cancelled.add(request_id)
            task.cancel()

    def set_budget(self, tokens: int | None) -> None:
        """A live cap on the chunks read (heat still shortens remote answers)."""
        self._budget = tokens

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    """The system prompt and the question: nothing else leaves the device."""
    messages = [{"role": "user", "content": request.text}]
    if request.system_prompt:
        messages.insert(0, {"role": "system", "content": request.system_prompt})
    return messages


def _cap(limit: int | None, budget: int | None) -> int | None:
    caps = [n for n in (limit, budget) if n is not None]
    return min(caps) if caps else None


async def _events(response: httpx.Response) -> Any:
    """The JSON objects of an SSE stream's ``data:`` lines, until ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank lines end events, ":" lines are comments
        data = line[5:].strip()
        if data.startswith("[DONE]"):
            return
        event = json.loads(data)
        if isinstance(event, dict) and "error" in event:
            raise GeneratorUnavailable(f"the server failed mid-answer: {event['error']}")
        yield event


def _done(request: ChatRequest, model: str, parts: list[str], finish: FinishReason,
          started: float, first_at: float | None, tokens: int | None) -> Completion:
    ended = time.monotonic()
    first = first_at or ended
    n = tokens or len(parts)
    return Completion(
        id=request.id, text="".join(parts).strip(), tokens=n, finish_reason=finish,
        ttft_ms=(first - started) * 1000, model=model, total_ms=(ended - started) * 1000,
        tokens_per_s=(n - 1) / (ended - first) if n > 1 and ended > first else 0.0)

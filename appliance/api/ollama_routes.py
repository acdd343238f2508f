"""The Ollama-compatible routes, as Home Assistant's Ollama integration and Open WebUI use them.

``/api/tags`` lists our model (as ``name:latest``, like Ollama), so Home
Assistant never tries to pull; ``/api/pull`` of that name succeeds at once and
of any other is a 404. ``/api/chat`` and ``/api/generate`` stream NDJSON by
default, one object per line and never a blank line, the last with
``done: true``; tool calls carry their arguments as a JSON object. Errors are
``{"error": "..."}`` with a status code. ``think: false|true`` turns a thinking
model's thought off or on; the thought comes back as ``message.thinking``
(``thinking`` for ``/api/generate``), in the last line of a stream, never in
the content.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from appliance.api import chat
from appliance.api.answering import Final, respond
from appliance.api.context import Context
from appliance.api.errors import ApiError, bad_request
from appliance.api.http_body import read_json
from appliance.api.model_names import answered_name, variant_names
from appliance.api.schema import simplify
from appliance.api.tools import ToolCall, parse_tools
from appliance.llm.types import Sampling

OLLAMA_VERSION = "0.6.3"
"""The Ollama release whose API these routes follow (clients compare it to decide what to send)."""
NDJSON = "application/x-ndjson"


def error_body(error: ApiError) -> dict[str, Any]:
    """Ollama's error shape."""
    return {"error": str(error)}


def add_routes(app: web.Application, ctx: Context) -> None:
    """Add the Ollama routes."""
    routes = _Routes(ctx)
    app.router.add_get("/", routes.root)
    app.router.add_get("/api/version", routes.version)
    app.router.add_get("/api/tags", routes.tags)
    app.router.add_get("/api/ps", routes.ps)
    app.router.add_post("/api/show", routes.show)
    app.router.add_post("/api/pull", routes.pull)
    app.router.add_post("/api/chat", routes.chat)
    app.router.add_post("/api/generate", routes.generate)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


class _Routes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.card = ctx.card

    async def root(self, _request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, _request: web.Request) -> web.Response:
        return web.json_response({"version": OLLAMA_VERSION})

    def _listing(self, name: str | None = None) -> dict[str, Any]:
        card, name = self.card, name or self.card.tagged
        return {"name": name, "model": name, "modified_at": card.modified_iso,
                "size": card.size, "digest": card.digest, "details": card.details()}

    async def tags(self, _request: web.Request) -> web.Response:
        variants = variant_names(self.card, self.ctx.settings.llm.adapters)  # LoRA adapters
        return web.json_response({"models": [self._listing(),
                                             *(self._listing(v) for v in variants)]})

    async def ps(self, _request: web.Request) -> web.Response:
        if not self.ctx.status.ready:
            return web.json_response({"models": []})
        loaded = {**self._listing(), "size_vram": 0, "context_length": self.card.n_ctx,
                  "expires_at": (datetime.now(UTC) + timedelta(days=3650)).isoformat()}
        loaded.pop("modified_at")
        return web.json_response({"models": [loaded]})

    async def show(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        self.ctx.check_model(body.get("model", body.get("name")))
        card = self.card
        return web.json_response({
            "modelfile": f"FROM {card.name}\n", "parameters": f"num_ctx {card.n_ctx}",
            "template": "", "details": card.details(), "modified_at": card.modified_iso,
            "model_info": {"general.architecture": card.family,
                           f"{card.family}.context_length": card.n_ctx},
            "capabilities": ["completion", "tools"]})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        self.ctx.check_model(body.get("model", body.get("name")))
        if body.get("stream", True) is False:
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        await response.write(_line({"status": "success"}))
        await response.write_eof()
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        adapter = self.ctx.check_model(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise bad_request("messages: expected a list of messages")
        parsed = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
        return await self._answer(request, body, parsed, "message", adapter)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        adapter = self.ctx.check_model(body.get("model"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise bad_request("prompt: expected a string")
        if not prompt.strip():  # Ollama's way of loading a model: nothing to answer
            return web.json_response({"model": self.card.tagged, "created_at": _now(),
                                      "response": "", "done": True, "done_reason": "load"})
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise bad_request("system: expected a string")
        parsed = [chat.Message("system", system)] if system else []
        parsed.append(chat.Message("user", prompt))
        return await self._answer(request, body, parsed, "response", adapter)

    async def _answer(self, request: web.Request, body: dict[str, Any],
                      messages: list[chat.Message], field: str,
                      adapter: str | None) -> web.StreamResponse:
        options = await asyncio.to_thread(_options, body)  # schemas: off the loop
        chat_request = replace(chat.chat_request(messages, options,
                                                 self.ctx.settings.llm.system_prompt),
                               adapter=adapter, think=_think(body.get("think")))
        pending = self.ctx.gate.submit(chat_request, request.remote or "", options.max_tokens)
        name = answered_name(self.card.tagged, self.card, adapter)
        return await respond(request, pending, _Ndjson(name, field),
                             tools=options.uses_tools, stream=body.get("stream", True) is not False)


class _Ndjson:
    """Ollama's responses: one JSON object, or NDJSON lines ending with ``done: true``."""

    content_type = NDJSON

    def __init__(self, model: str, field: str) -> None:
        self.model, self.field = model, field  # field: "message" (chat) or "response"

    def _part(self, text: str, call: ToolCall | None = None,
              thinking: str | None = None) -> dict[str, Any]:
        part: dict[str, Any] = {
            "model": self.model, "created_at": _now(),
            self.field: _message_out(text, call) if self.field == "message" else text}
        if thinking:  # a thinking model's thought, beside the answer (never in it)
            (part["message"] if self.field == "message" else part)["thinking"] = thinking
        return part

    def opening(self) -> list[bytes]:
        return []

    def delta(self, text: str) -> bytes:
        return _line({**self._part(text), "done": False})

    def closing(self, final: Final) -> list[bytes]:
        call = final.reply.call
        lines = [_line({**self._part("", call), "done": False})] if call is not None else []
        return [*lines, _line(self._end(final, ""))]

    def whole(self, final: Final) -> dict[str, Any]:
        return self._end(final, final.reply.text, final.reply.call)

    def failure(self, error: ApiError) -> bytes:
        return _line(error_body(error))

    def _end(self, final: Final, text: str, call: ToolCall | None = None) -> dict[str, Any]:
        done = final.answer.completion
        total_ns = int(done.total_ms * 1e6) if done is not None else 0
        first_ns = int(done.ttft_ms * 1e6) if done is not None else 0
        return {
            **self._part(text, call, final.answer.thinking), "done": True,
            "done_reason": "length" if final.finish == "length" else "stop",
            "total_duration": total_ns, "load_duration": 0, "prompt_eval_duration": first_ns,
            "eval_count": final.answer.tokens,
            "eval_duration": max(total_ns - first_ns, 0)}


def _message_out(text: str, call: ToolCall | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if call is not None:
        message["tool_calls"] = [{"function": {"name": call.name, "arguments": call.arguments}}]
    return message


def _message(raw: Any, where: str) -> chat.Message:
    if not isinstance(raw, dict):
        raise bad_request(f"{where}: expected a message object")
    role = raw.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise bad_request(f"{where}.role: expected system, user, assistant or tool, "
                          f"got {role!r}")
    if raw.get("images"):
        raise bad_request(f"{where}.images: this model reads text only")
    calls = []
    for j, call in enumerate(raw.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where}.tool_calls[{j}]: expected {{\"function\": "
                              "{\"name\", \"arguments\"}}")
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):  # some clients send OpenAI's JSON text
            try:
                arguments = json.loads(arguments)
            except ValueError:
                raise bad_request(f"{where}.tool_calls[{j}].function.arguments: "
                                  "not JSON") from None
        calls.append(ToolCall(function["name"], arguments if isinstance(arguments, dict)
                              else {}))
    tool_name = raw.get("tool_name")
    return chat.Message(role, chat.text_of(raw.get("content"), f"{where}.content"),
                        tuple(calls), tool_name if isinstance(tool_name, str) else None)


def _think(value: Any) -> bool | None:
    """Ollama's ``think``: true, false, or an effort (``"low"``...), which means true."""
    if value is None or isinstance(value, bool):
        return value
    if value in ("low", "medium", "high"):
        return True
    raise bad_request(f"think: expected true, false, low, medium or high, got {value!r}")


def _options(body: dict[str, Any]) -> chat.Options:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise bad_request("options: expected an object")
    chat.integer(options.get("num_ctx"), "options.num_ctx", 0, 1 << 30)  # ours is fixed
    sampling: Sampling = chat.sampling(
        temperature=options.get("temperature"), top_p=options.get("top_p"),
        top_k=options.get("top_k"), repeat_penalty=options.get("repeat_penalty"),
        frequency_penalty=options.get("frequency_penalty"),
        presence_penalty=options.get("presence_penalty"), seed_value=options.get("seed"),
        where="options.")
    return chat.Options(
        max_tokens=chat.max_tokens(options.get("num_predict"), "options.num_predict"),
        sampling=sampling, stop=chat.stops(options.get("stop"), "options.stop"),
        tools=parse_tools(body.get("tools")), json_schema=_format(body.get("format")))


def _format(value: Any) -> str | None:
    """Ollama's ``format``: ``"json"`` or a JSON schema, as the schema of the output."""
    if value in (None, ""):
        return None
    if value == "json":
        return json.dumps({"type": "object"})
    return json.dumps(simplify(value, "format"))

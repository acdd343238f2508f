"""The OpenAI-compatible routes: ``/v1/models`` and ``/v1/chat/completions``.

Streamed answers are server-sent events, ``data: {chat.completion.chunk}``
with ``choices[0].delta``, ending ``data: [DONE]``; a tool call comes as
``tool_calls`` with its arguments as JSON text and ``finish_reason:
"tool_calls"``. Errors are ``{"error": {"message", "type", "param", "code"}}``.
A thinking model's thought is ``reasoning_content`` on the message (a stream:
one delta of it before the last), never in ``content``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from appliance.api import chat
from appliance.api.answering import Final, respond
from appliance.api.context import Context
from appliance.api.errors import ApiError, bad_request
from appliance.api.http_body import read_json
from appliance.api.model_names import answered_name, variant_names
from appliance.api.schema import simplify
from appliance.api.tools import Choice, ToolCall, parse_tools
from appliance.protocol.answer import Answer

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}


def error_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's error shape."""
    kind = error.problem.value
    return {"error": {"message": str(error), "type": kind.openai_type, "param": error.param,
                      "code": kind.code}}


def add_routes(app: web.Application, ctx: Context) -> None:
    """Add the OpenAI routes."""
    routes = _Routes(ctx)
    app.router.add_get("/v1/models", routes.models)
    app.router.add_get("/v1/models/{model}", routes.model)
    app.router.add_post("/v1/chat/completions", routes.completions)


class _Routes:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.card = ctx.card

    def _model(self, name: str | None = None) -> dict[str, Any]:
        return {"id": name or self.card.name, "object": "model",
                "created": int(self.card.modified_at.timestamp()), "owned_by": "appliance"}

    async def models(self, _request: web.Request) -> web.Response:
        variants = variant_names(self.card, self.ctx.settings.llm.adapters)  # LoRA adapters
        return web.json_response({"object": "list", "data": [
            self._model(), *(self._model(v) for v in variants)]})

    async def model(self, request: web.Request) -> web.Response:
        adapter = self.ctx.check_model(request.match_info["model"])
        return web.json_response(self._model(answered_name(self.card.name, self.card, adapter)))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        adapter = self.ctx.check_model(body.get("model"))
        if chat.integer(body.get("n"), "n", 0, 1 << 20) not in (None, 1):
            raise bad_request("n: only one choice is generated", "n")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise bad_request("messages: expected a list of messages", "messages")
        parsed = _messages(messages)
        options = await asyncio.to_thread(_options, body)  # schemas: off the loop
        chat_request = replace(chat.chat_request(parsed, options,
                                                 self.ctx.settings.llm.system_prompt),
                               adapter=adapter)
        pending = self.ctx.gate.submit(chat_request, request.remote or "", options.max_tokens)
        usage = isinstance(body.get("stream_options"), dict) and bool(
            body["stream_options"].get("include_usage"))
        name = answered_name(self.card.name, self.card, adapter)
        return await respond(request, pending, _Sse(name, usage),
                             tools=options.uses_tools, stream=body.get("stream") is True)


class _Sse:
    """OpenAI's responses: one ``chat.completion``, or ``chat.completion.chunk`` events."""

    content_type = "text/event-stream"

    def __init__(self, model: str, usage: bool) -> None:
        self.model, self.usage = model, usage
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model, "choices": [
                           {"index": 0, "delta": delta, "finish_reason": finish}]})

    def opening(self) -> list[bytes]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def closing(self, final: Final) -> list[bytes]:
        call = final.reply.call
        lines = [self._chunk({"tool_calls": [{"index": 0, **_call(call)}]})] if call else []
        if final.answer.thinking:
            lines.append(self._chunk({"reasoning_content": final.answer.thinking}))
        lines.append(self._chunk({}, final.finish))
        if self.usage:
            lines.append(_event({"id": self.id, "object": "chat.completion.chunk",
                                 "created": self.created, "model": self.model, "choices": [],
                                 "usage": _usage(final.answer)}))
        return [*lines, b"data: [DONE]\n\n"]

    def whole(self, final: Final) -> dict[str, Any]:
        call = final.reply.call
        message: dict[str, Any] = {"role": "assistant",
                                   "content": None if call else final.reply.text}
        if call is not None:
            message["tool_calls"] = [_call(call)]
        if final.answer.thinking:
            message["reasoning_content"] = final.answer.thinking
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [
                    {"index": 0, "message": message, "finish_reason": final.finish,
                     "logprobs": None}],
                "usage": _usage(final.answer)}

    def failure(self, error: ApiError) -> bytes:
        return _event(error_body(error)) + b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def _call(call: ToolCall) -> dict[str, Any]:
    return {"id": f"call_{secrets.token_hex(8)}", "type": "function",
            "function": {"name": call.name,
                         "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


def _usage(answer: Answer) -> dict[str, int]:
    completion = answer.tokens
    prompt = answer.completion.prompt_tokens if answer.completion is not None else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _messages(raw: list[Any]) -> list[chat.Message]:
    names: dict[str, str] = {}  # tool call id -> the tool's name, for the results
    parsed = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad_request(f"{where}.role: expected system, developer, user, assistant or "
                              "tool", f"{where}.role")
        calls = []
        for j, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise bad_request(f"{where}.tool_calls[{j}]: expected a function call",
                                  f"{where}.tool_calls")
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except (TypeError, ValueError):
                raise bad_request(f"{where}.tool_calls[{j}].function.arguments: expected "
                                  "JSON text", f"{where}.tool_calls") from None
            calls.append(ToolCall(function["name"], arguments if isinstance(arguments, dict)
                                  else {}))
            if isinstance(call.get("id"), str):
                names[call["id"]] = function["name"]
        name = message.get("name")
        tool_name = names.get(message.get("tool_call_id") or "") or (
            name if isinstance(name, str) else None)
        parsed.append(chat.Message(ROLES[message["role"]],  # type: ignore[arg-type]
                                   chat.text_of(message.get("content"), f"{where}.content"),
                                   tuple(calls), tool_name))
    return parsed


def _options(body: dict[str, Any]) -> chat.Options:
    tools = parse_tools(body.get("tools"))
    choice: Choice = "auto"
    raw_choice = body.get("tool_choice")
    if raw_choice in ("none", "auto", "required"):
        choice = raw_choice
    elif isinstance(raw_choice, dict):
        function = raw_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        tools = tuple(t for t in tools if t.name == name)
        if not tools:
            raise bad_request(f"tool_choice: no tool named {name!r} is offered", "tool_choice")
        choice = "required"
    elif raw_choice is not None:
        raise bad_request("tool_choice: expected none, auto, required or a function",
                          "tool_choice")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return chat.Options(
        max_tokens=chat.max_tokens(limit, "max_tokens"),
        sampling=chat.sampling(
            temperature=body.get("temperature"), top_p=body.get("top_p"),
            top_k=body.get("top_k"), repeat_penalty=body.get("repeat_penalty"),
            frequency_penalty=body.get("frequency_penalty"),
            presence_penalty=body.get("presence_penalty"), seed_value=body.get("seed")),
        stop=chat.stops(body.get("stop"), "stop"), tools=tools, tool_choice=choice,
        json_schema=_response_format(body.get("response_format")))


def _response_format(value: Any) -> str | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema" and isinstance(value.get("json_schema"), dict):
        return json.dumps(simplify(value["json_schema"].get("schema"),
                                   "response_format.json_schema.schema"))
    raise bad_request("response_format: expected text, json_object or json_schema",
                      "response_format")

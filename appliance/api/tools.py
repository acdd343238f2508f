"""Tool calls that a small model cannot get wrong: the reply is grammar-constrained JSON.

When a request carries tools, the model is told about them in the system
prompt and its reply is constrained (``ChatRequest.json_schema``, turned into
a llama.cpp grammar by the engine) to exactly one of::

    {"tool": "<one of the tools>", "arguments": {<that tool's parameters>}}
    {"answer": "<plain text for the user>"}

so the reply always parses, always names a tool the client offered, and its
arguments always have the shape of that tool's (simplified,
:mod:`appliance.api.schema`) parameters. :class:`ReplyStream` reads the reply
as it streams: an answer's text is handed on while it is generated (Home
Assistant starts speaking after 60 characters), a tool call when it is complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from appliance.api.errors import bad_request
from appliance.api.schema import simplify

MAX_TOOLS = 64
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ANSWER_START = re.compile(r'\s*\{\s*"answer"\s*:\s*"')
_TOOL_START = re.compile(r'\s*\{\s*"tool"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t"}

Choice = Literal["auto", "required", "none"]


@dataclass(frozen=True)
class Tool:
    """A tool the client offers: its name, what it does, its (simplified) parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The model's call of one tool."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """What the model said: text for the user, or a tool call (then ``text`` is empty)."""

    text: str
    call: ToolCall | None = None


def parse_tools(raw: Any, where: str = "tools") -> tuple[Tool, ...]:
    """The ``tools`` of an Ollama or OpenAI request (both use OpenAI's function format)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise bad_request(f"{where}: expected a list of tools", where)
    if len(raw) > MAX_TOOLS:
        raise bad_request(f"{where}: at most {MAX_TOOLS} tools", where)
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or item.get("type", "function") != "function":
            raise bad_request(f"{at}: expected {{\"type\": \"function\", \"function\": "
                              "{\"name\", \"parameters\"}}", at)
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(f"{at}.function.name: expected 1 to 64 letters, digits or "
                              "_.:- characters", f"{at}.function.name")
        if any(t.name == name for t in tools):
            raise bad_request(f"{at}.function.name: {name!r} is offered twice", at)
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise bad_request(f"{at}.function.description: expected a string", at)
        parameters = function.get("parameters")
        schema = (simplify(parameters, f"{at}.function.parameters") if parameters
                  else {"type": "object", "properties": {}, "required": []})
        if schema.get("type") != "object":
            raise bad_request(f"{at}.function.parameters: expected an object schema", at)
        tools.append(Tool(name, " ".join(description.split()), schema))
    return tuple(tools)


def reply_schema(tools: tuple[Tool, ...], choice: Choice = "auto") -> str:
    """The JSON schema (text) the reply must match: a call of one of ``tools``, or an answer."""
    options: list[dict[str, Any]] = [
        {"type": "object", "properties": {"tool": {"const": t.name}, "arguments": t.parameters},
         "required": ["tool", "arguments"]} for t in tools]
    if choice != "required":
        options.append({"type": "object", "properties": {"answer": {"type": "string"}},
                        "required": ["answer"]})
    return json.dumps(options[0] if len(options) == 1 else {"anyOf": options})


def instructions(tools: tuple[Tool, ...], choice: Choice = "auto") -> str:
    """What the system prompt tells the model about ``tools`` and the reply's format."""
    lines = ["You can call these tools:"]
    for tool in tools:
        about = f" {tool.description}" if tool.description else ""
        lines.append(f"- {tool.name}:{about} Arguments: {shape(tool.parameters)}")
    lines.append('To call a tool, reply with {"tool": "<name>", "arguments": {...}}.')
    if choice == "required":
        lines.append("Always call exactly one tool.")
    else:
        lines.append('Otherwise reply with {"answer": "<your reply>"}. Call a tool only when '
                     "the user asks for what it does; after a tool result, answer the user.")
    return "\n".join(lines)


def shape(schema: dict[str, Any]) -> str:
    """A short, readable outline of a simplified schema, for the prompt."""
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        values = [json.dumps(v, ensure_ascii=False) for v in schema["enum"][:12]]
        return " | ".join(values + (["..."] if len(schema["enum"]) > 12 else []))
    if "anyOf" in schema:
        return " | ".join(dict.fromkeys(shape(alt) for alt in schema["anyOf"]))
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", ()))
        return "{" + ", ".join(f'"{k}"{"" if k in required else "?"}: {shape(v)}'
                               for k, v in schema["properties"].items()) + "}"
    if kind == "array":
        return f"[{shape(schema.get('items', {}))}, ...]"
    return str(kind or "any")


def call_text(call: ToolCall) -> str:
    """An earlier tool call, in history, written the way the model itself writes one."""
    return json.dumps({"tool": call.name, "arguments": call.arguments}, ensure_ascii=False)


class ReplyStream:
    """Reads one constrained reply as it streams; :meth:`feed` returns new answer text."""

    def __init__(self) -> None:
        self._raw = ""
        self._mode: Literal["unknown", "answer", "tool"] = "unknown"
        self._at = 0
        self._closed = False
        self._text: list[str] = []

    def feed(self, delta: str) -> str:
        """Take streamed reply text; returns the answer text it completes (often empty)."""
        self._raw += delta
        if self._mode == "unknown":
            if (match := _ANSWER_START.match(self._raw)) is not None:
                self._mode, self._at = "answer", match.end()
            elif _TOOL_START.match(self._raw):
                self._mode = "tool"
        if self._mode != "answer" or self._closed:
            return ""
        text = self._decode()
        if text:
            self._text.append(text)
        return text

    def _decode(self) -> str:
        """Decode the answer's JSON string as far as it is complete."""
        raw, i, out = self._raw, self._at, []
        while i < len(raw):
            c = raw[i]
            if c == '"':
                self._closed = True
                i += 1
                break
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= len(raw):
                break
            if raw[i + 1] != "u":
                out.append(_ESCAPES.get(raw[i + 1], raw[i + 1]))
                i += 2
                continue
            if i + 6 > len(raw):
                break
            code = int(raw[i + 2: i + 6], 16)
            if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for its second half
                if i + 12 > len(raw):
                    break
                low = int(raw[i + 8: i + 12], 16) if raw[i + 6: i + 8] == "\\u" else 0
                if 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    i += 12
                    continue
                code = 0xFFFD
            out.append("\ufffd" if 0xDC00 <= code < 0xE000 else chr(code))
            i += 6
        self._at = i
        return "".join(out)

    def finish(self, text: str) -> Reply:
        """The reply, once the whole of it (``text``, the answer's final text) is known.

        A reply cut short (by ``max_tokens``, the thermal budget or a cancel)
        keeps the answer text streamed so far; a cut tool call is no call.
        """
        try:
            data = json.loads(text, strict=False)  # the grammar lets raw control characters in
        except ValueError:
            return Reply("".join(self._text))
        if isinstance(data, dict) and isinstance(data.get("tool"), str):
            arguments = data.get("arguments")
            return Reply("", ToolCall(data["tool"], arguments if isinstance(arguments, dict)
                                      else {}))
        if isinstance(data, dict) and isinstance(data.get("answer"), str):
            return Reply(data["answer"])
        return Reply("".join(self._text))

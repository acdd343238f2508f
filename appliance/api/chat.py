"""From a client's chat messages and options to our :class:`~appliance.llm.ChatRequest`.

Both HTTP APIs parse their own JSON into :class:`Message` and :class:`Options`
(the field names differ, the meaning does not); :func:`chat_request` does the
rest the same way for both:

* every system message becomes the system prompt, which goes first so that
  the prefix cache still serves it; tool instructions are added to it;
* earlier turns become the history, with tool calls written as the model
  writes them and tool results as user turns (``Result of <tool>: ...``),
  because chat templates treat a ``tool`` role in ways our prompt builder
  cannot rely on (Llama 3's writes its content through ``tojson``);
  consecutive turns of one role are joined, as strict templates require;
* the last turn, which must be the user's (or a tool's result), is the question;
* sampling values are kept within the ranges of the ``llm`` settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.api.errors import bad_request
from appliance.api.tools import Choice, Tool, ToolCall, call_text, instructions, reply_schema
from appliance.llm import ChatRequest
from appliance.llm.types import Sampling, Turn

MAX_MESSAGES = 512
MAX_STOPS = 8
MAX_STOP_CHARS = 64
MAX_SEED = 2**31 - 1

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Message:
    """One chat message, whatever the API: a tool call of the assistant, or a tool's result."""

    role: Role
    content: str
    calls: tuple[ToolCall, ...] = ()
    tool_name: str | None = None


@dataclass(frozen=True)
class Options:
    """What a client may set besides its messages (``None``: our configured value)."""

    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: Choice = "auto"
    json_schema: str | None = None

    @property
    def uses_tools(self) -> bool:
        """Whether the reply is a tool call or an answer, as constrained JSON."""
        return bool(self.tools) and self.tool_choice != "none"


def chat_request(messages: list[Message], options: Options, default_system: str) -> ChatRequest:
    """The model's request for ``messages``; raises a 400 :class:`ApiError` when malformed."""
    if not messages:
        raise bad_request("messages: at least one message is needed", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"messages: at most {MAX_MESSAGES} messages", "messages")
    system = [m.content.strip() for m in messages if m.role == "system" and m.content.strip()]
    turns: list[Turn] = []
    for message in messages:
        if message.role == "system":
            continue
        turn = _turn(message)
        if turns and turns[-1].role == turn.role:
            turn = Turn(turn.role, f"{turns[-1].content}\n\n{turn.content}")
            turns.pop()
        turns.append(turn)
    if not turns or turns[-1].role != "user":
        raise bad_request("messages: the last message must be the user's (or a tool's "
                          "result)", "messages")
    schema = options.json_schema
    prompt = "\n\n".join(system) if system else None
    if options.uses_tools:
        prompt = (f"{prompt or default_system}\n\n"
                  f"{instructions(options.tools, options.tool_choice)}")
        schema = reply_schema(options.tools, options.tool_choice)
    return ChatRequest(turns[-1].content, system_prompt=prompt, history=tuple(turns[:-1]),
                       sampling=options.sampling, stop=options.stop, json_schema=schema)


def _turn(message: Message) -> Turn:
    if message.role == "tool":
        name = message.tool_name or "the tool"
        return Turn("user", f"Result of {name}: {message.content}")
    if message.role == "assistant" and message.calls:
        parts = [message.content.strip()] if message.content.strip() else []
        return Turn("assistant", "\n".join([*parts, *map(call_text, message.calls)]))
    return Turn(message.role, message.content)  # type: ignore[arg-type]


# --- checking the values clients send ---------------------------------------------------------

def text_of(value: Any, where: str) -> str:
    """A message's content: a string, ``null``, or OpenAI's list of text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise bad_request(f"{where}[{i}]: only text parts are supported", where)
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request(f"{where}: expected a string", where)


def number(value: Any, where: str, low: float, high: float) -> float | None:
    """An optional number, clamped to ``[low, high]``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"{where}: expected a number, got {value!r}", where)
    return min(max(float(value), low), high)


def integer(value: Any, where: str, low: int, high: int) -> int | None:
    """An optional integer, clamped to ``[low, high]``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{where}: expected an integer, got {value!r}", where)
    return min(max(value, low), high)


def max_tokens(value: Any, where: str) -> int | None:
    """A token limit; zero or negative (Ollama's -1 and -2) means ours."""
    count = integer(value, where, -2, 1 << 30)
    return count if count is not None and count > 0 else None


def seed(value: Any, where: str) -> int | None:
    """A sampling seed; a negative one (random, in some clients) means ours."""
    chosen = integer(value, where, -(1 << 63), 1 << 63)
    return min(chosen, MAX_SEED) if chosen is not None and chosen >= 0 else None


def stops(value: Any, where: str) -> tuple[str, ...]:
    """Stop strings: one string or a list of them."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(s, str) for s in values):
        raise bad_request(f"{where}: expected a string or a list of strings", where)
    if len(values) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in values):
        raise bad_request(f"{where}: at most {MAX_STOPS} stop strings of at most "
                          f"{MAX_STOP_CHARS} characters", where)
    return tuple(s for s in values if s)


def sampling(*, temperature: Any, top_p: Any, top_k: Any = None, repeat_penalty: Any = None,
             frequency_penalty: Any = None, presence_penalty: Any = None,
             seed_value: Any = None, where: str = "") -> Sampling:
    """Sampling overrides within the ranges ``llm`` itself allows."""
    return Sampling(
        temperature=number(temperature, f"{where}temperature", 0.0, 2.0),
        top_p=number(top_p, f"{where}top_p", 0.0, 1.0),
        top_k=integer(top_k, f"{where}top_k", 0, 1000),
        repeat_penalty=number(repeat_penalty, f"{where}repeat_penalty", 0.5, 2.0),
        frequency_penalty=number(frequency_penalty, f"{where}frequency_penalty", -2.0, 2.0),
        presence_penalty=number(presence_penalty, f"{where}presence_penalty", -2.0, 2.0),
        seed=seed(seed_value, f"{where}seed"),
    )

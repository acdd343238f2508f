"""The Talk page: a chat box that asks through the same gate as every other API entrance.

``POST /talk/ask`` ``{"text", "conversation"?}`` submits the question to the
:class:`~appliance.api.gate.ApiGate` (its rate limit, the thermal gate, the
queue's priority, cancel, the actions this entrance may take, the manuals) and
answers a stream of JSON lines, as they come::

    {"started": {"id": "<request id>", "conversation": "<id>"}}
    {"chunk": "Hel"}
    {"chunk": "lo"}
    {"answer": {"text": "Hello", "finish_reason": "stop", "tokens": 2, ...}}

The answer is the one MQTT publishes (:meth:`Answer.to_json`: ``sources``
for a manual's answer, ``action``/``verdict``/``needs`` for an action,
``error``, ``conversation``). A refusal before the stream (rate limit,
cooling down, a full queue, a bad body) is ``{"error": "..."}`` with its
status. A question without a conversation starts one; sending its id back
asks a follow-up (:mod:`appliance.service.conversations`).

Stop: ``POST /talk/stop`` ``{"id"}`` cancels a question asked here (its
stream ends with ``finish_reason: cancelled``), and a page that goes away
cancels it too: the server cancels the handler, which cancels the request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.api.errors import bad_request
from appliance.api.gate import Pending
from appliance.api.http_body import read_json
from appliance.console.app import View
from appliance.console.roles import Access
from appliance.llm import ChatRequest, Chunk
from appliance.logs import get_logger
from appliance.protocol.messages import CONVERSATION_ID
from appliance.service.conversations import new_conversation_id

if TYPE_CHECKING:
    from appliance.console.app import Console

log = get_logger("console")

MAX_QUESTION_CHARS = 4000
NDJSON = "application/x-ndjson"


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


class Talk(View):
    """The Talk page, its questions and their stop."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.asking: dict[str, Pending] = {}
        """The questions asked here whose stream is open, by request id (what stop cancels)."""

    def add_routes(self, console: Console) -> None:
        """The page, asking and stopping (all need the login)."""
        console.add("GET", "/talk", self.page, Access.ADMIN)
        console.add("POST", "/talk/ask", self.ask, Access.ADMIN)
        console.add("POST", "/talk/stop", self.stop, Access.ADMIN)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The chat box."""
        return self.console.pages.render(request, "talk.html", "Talk",
                                         {"max_chars": MAX_QUESTION_CHARS})

    async def ask(self, request: web.Request) -> web.StreamResponse:
        """Ask ``text``; the answer streams back as JSON lines (see the module's docstring)."""
        text, conversation = parse_question(await read_json(request))
        self.console.audit(request, "ask", text[:80])
        pending = self.console.gate.submit(ChatRequest(text), request.remote or "",
                                           api="console", conversation=conversation)
        request_id = pending.request.id
        self.asking[request_id] = pending
        response = web.StreamResponse(headers={"Content-Type": NDJSON,
                                               "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            await response.write(_line({"started": {"id": request_id,
                                                    "conversation": conversation}}))
            async for event in pending.events():
                if isinstance(event, Chunk):
                    await response.write(_line({"chunk": event.delta}))
                else:
                    await response.write(_line({"answer": event.to_json()}))
            await response.write_eof()
        except ConnectionResetError:  # the page went away; its question is cancelled below
            log.info("talk_client_gone", id=request_id)
        finally:  # a cancelled handler (the client disconnected) comes here too
            self.asking.pop(request_id, None)
            pending.cancel()
        return response

    async def stop(self, request: web.Request) -> web.StreamResponse:
        """Cancel a question asked here; ``{"stopped": false}`` when it has already ended."""
        body = await read_json(request)
        request_id = body.get("id")
        if not isinstance(request_id, str) or not request_id:
            raise bad_request("id: expected the id of the question to stop")
        pending = self.asking.get(request_id)
        if pending is not None:
            pending.cancel()
            self.console.audit(request, "stop", request_id)
        return web.json_response({"stopped": pending is not None})

    async def close(self) -> None:
        """The questions still streaming are cancelled."""
        for pending in list(self.asking.values()):
            pending.cancel()


def parse_question(body: dict[str, Any]) -> tuple[str, str]:
    """The question and its conversation (a new one if none is named); a one-line 400."""
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise bad_request("text: expected the question, a non-empty string", "text")
    text = text.strip()
    if len(text) > MAX_QUESTION_CHARS:
        raise bad_request(f"text: at most {MAX_QUESTION_CHARS} characters, got {len(text)}",
                          "text")
    conversation = body.get("conversation")
    if conversation is None or conversation == "":
        return text, new_conversation_id()
    if not isinstance(conversation, str) or not CONVERSATION_ID.fullmatch(conversation):
        raise bad_request("conversation: expected an id of 1 to 64 letters, digits, '.', '_', "
                          "':' or '-'", "conversation")
    return text, conversation

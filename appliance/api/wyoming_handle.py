"""Wyoming's "handle": a transcript answered by the model, or not handled, with the reason.

Home Assistant sends each utterance on a new connection with its
``conversation_id``: the service's conversations (``service/conversations.py``)
keep its earlier turns, as for every entrance. In toy mode (``voice.kid_safe``)
the children's system prompt and token limit apply (the dispatcher's
preparation sees a Wyoming request), a question with a blocked word is not
handled, and a blocked sentence of an answer becomes the friendly refusal.
"""

from __future__ import annotations

from typing import Any

from wyoming.asr import Transcript
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled

from appliance.api.errors import ApiError, Problem
from appliance.api.gate import ApiGate, Pending, check_answer
from appliance.llm import ChatRequest
from appliance.logs import get_logger
from appliance.protocol.messages import CONVERSATION_ID
from appliance.voice.kid_safe import REFUSAL, KidFilter
from appliance.voice.pieces import sentences

log = get_logger("wyoming")


class Handler:
    """Answers transcripts through the gate; shared by every connection."""

    def __init__(self, gate: ApiGate, kid: KidFilter | None) -> None:
        self.gate = gate
        self.kid = kid

    async def handle(self, message: Transcript, peer: str, waiting: set[Pending]) -> Event:
        """``handled`` or ``not-handled`` for one transcript; ``waiting`` holds its request."""
        context: dict[str, Any] = message.context if isinstance(message.context, dict) else {}
        conversation = context.get("conversation_id")
        if not isinstance(conversation, str) or not CONVERSATION_ID.fullmatch(conversation):
            conversation = None  # answered alone
        try:
            text = await self._answer(message.text.strip(), conversation, peer, waiting)
        except ApiError as exc:
            log.info("wyoming_not_handled", reason=str(exc), peer=peer)
            return NotHandled(text=str(exc), context=context or None).event()
        return Handled(text=text, context=context or None).event()

    async def _answer(self, text: str, conversation: str | None, peer: str,
                      waiting: set[Pending]) -> str:
        if not text:
            raise ApiError(Problem.BAD_REQUEST, "nothing was said")
        kid = self.kid
        if kid is not None and kid.sentence(text) != text:
            raise ApiError(Problem.BAD_REQUEST, REFUSAL)
        # Toy mode's prompt and limit, and the conversation's earlier turns, are the
        # preparation's (appliance.service.preparation).
        pending = self.gate.submit(ChatRequest(text), peer, api="wyoming",
                                   conversation=conversation)
        waiting.add(pending)
        try:
            final = await pending.result()
        finally:
            waiting.discard(pending)
            pending.cancel()
        check_answer(final)
        answer = final.text
        if kid is not None:
            answer = " ".join(kid.sentence(s) for s in sentences(answer))
        return answer

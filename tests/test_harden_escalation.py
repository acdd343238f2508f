"""Escalation to a hostile upstream: ``appliance run``, a real mosquitto, a lying server.

The upstream is a hand-written aiohttp server on loopback that speaks just
enough of the OpenAI streaming protocol to misbehave the way a broken or
hostile one does: keep-alives and never a token, JSON of the wrong shape, an
answer that ignores ``max_tokens``, an error body that quotes our API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from appliance import logs
from appliance.bench.broker import free_port
from appliance.generate.mqtt_remote import MqttGenerator
from appliance.llm.types import ChatRequest, Chunk, Completion
from appliance.protocol.messages import Outgoing
from tests.conftest import BASE
from tests.helpers import eventually_async, keep_notify_drained
from tests.services import ApplianceProcess, Broker, Message, Peer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostileUpstream:
    """``POST /v1/chat/completions`` answered by :attr:`handler`, on its own loop and thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1"
        self.handler: Handler = keep_alives
        self.asked: list[dict[str, object]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(await request.json())
        return await self.handler(request)

    def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._serve)
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)  # a stream left open: cut it
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self._thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


async def keep_alives(request: web.Request) -> web.StreamResponse:
    """A comment every half second, never a token (until the client hangs up)."""
    response = await _sse(request)
    with contextlib.suppress(ConnectionResetError):
        for _ in range(1200):
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(0.5)
    return response


def events(*data: str) -> Handler:
    """These ``data:`` lines, then ``[DONE]``."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await _sse(request)
        with contextlib.suppress(ConnectionResetError):  # we may hang up first
            for item in data:
                await response.write(f"data: {item}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        return response
    return handler


def _chunk(text: str) -> str:
    return json.dumps({"model": "hostile", "choices": [{"delta": {"content": text}}]})


async def flood(request: web.Request) -> web.StreamResponse:
    """200,000 chunks, whatever ``max_tokens`` said."""
    response = await _sse(request)
    line = f"data: {_chunk('word ')}\n\n".encode()
    with contextlib.suppress(ConnectionResetError):  # we hang up once the budget is spent
        for _ in range(200):
            await response.write(line * 1000)
        await response.write(b"data: [DONE]\n\n")
    return response


@pytest.fixture
def upstream() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    server.start()
    yield server
    server.stop()


def _escalation(endpoint: str, extra: str = "") -> str:
    return (f"escalation:\n  enabled: true\n  endpoint: {endpoint}\n  model: hostile\n"
            "  first_token_timeout_s: 2\n  timeout_s: 300\n" + extra)


SECRET = "sk-hostile-" + os.urandom(8).hex()
"""The API key of :func:`escalating`'s device, which a hostile upstream quotes back."""


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[HostileUpstream]:
    """The upstream of :func:`escalating`'s device; each test sets its handler first."""
    server = HostileUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def escalating(module_start: Callable[..., ApplianceProcess],
               shared_upstream: HostileUpstream) -> tuple[ApplianceProcess, HostileUpstream]:
    """One device escalating to :func:`shared_upstream` with :data:`SECRET` as its key.

    Its breaker opens only after 100 failures in a row, so the tests that share
    it (each with its own ids and upstream handler) never see one another's.
    """
    app = module_start(root=_escalation(shared_upstream.endpoint, "  breaker_failures: 100\n"
                                        "  api_key_env: HOSTILE_KEY\n"), HOSTILE_KEY=SECRET)
    keep_notify_drained(app)  # it runs for several tests: its datagrams must not pile up
    return app, shared_upstream


@pytest.fixture
def asker(escalating: tuple[ApplianceProcess, HostileUpstream],
          module_broker: Broker) -> Iterator[Peer]:
    """A fresh peer of :func:`escalating`'s device: it sees what is retained, and what is new."""
    p = Peer(module_broker.port, [f"{BASE}/#"])
    yield p
    p.close()


def _ask(peer: Peer, request_id: str, max_tokens: int = 8) -> None:
    peer.publish(f"{BASE}/ask", json.dumps({"id": request_id, "text": "Hi.", "tier": "remote",
                                            "max_tokens": max_tokens}))


def _answer(peer: Peer, request_id: str, timeout: float = 120) -> dict[str, object]:
    return peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                         and m.json().get("id") == request_id, timeout).json()


def _fallback(answer: dict[str, object]) -> str:
    escalation = answer["escalation"]
    assert isinstance(escalation, dict), answer
    return str(escalation.get("fallback"))


def _escalation_state(m: Message, check: Callable[[dict[str, object]], bool]) -> bool:
    return m.topic == f"{BASE}/state" and check(m.json().get("escalation") or {})


@pytest.mark.slow
def test_keep_alives_do_not_hold_a_question_past_the_first_token_deadline(
        escalating: tuple[ApplianceProcess, HostileUpstream], asker: Peer) -> None:
    _, upstream = escalating
    peer = asker
    upstream.handler = keep_alives
    _ask(peer, "ka")
    answer = _answer(peer, "ka")  # timeout_s is 300 s: well before it, or not at all
    assert answer["tier"] == "local" and answer["text"]
    assert _fallback(answer) == "no first token within 2 s"
    _ask(peer, "next")  # the one after it is not stuck behind it either
    assert _fallback(_answer(peer, "next")) == "no first token within 2 s"


@pytest.mark.slow
def test_json_of_the_wrong_shape_falls_back_and_counts_for_the_breaker(
        start: Callable[..., ApplianceProcess], peer: Peer, upstream: HostileUpstream) -> None:
    start(root=_escalation(upstream.endpoint, "  breaker_failures: 3\n  breaker_s: 600\n"))
    shapes = ["[1,2,3]", '{"choices":[null]}', '{"choices":[{"delta":"hi"}]}']
    for i, shape in enumerate(shapes):
        upstream.handler = events(shape)
        _ask(peer, f"shape{i}")
        answer = _answer(peer, f"shape{i}")
        assert answer["tier"] == "local" and answer["finish_reason"] != "error", answer
        assert _fallback(answer).startswith("the server's stream is malformed"), answer
    peer.wait_for(lambda m: _escalation_state(m, lambda e: e.get("open") is True))
    _ask(peer, "skipped")
    assert "skipped after repeated failures" in _fallback(_answer(peer, "skipped"))
    assert len(upstream.asked) == 3  # the open breaker sent nothing more


@pytest.mark.slow
def test_a_remote_answer_is_cut_at_the_local_budget(
        escalating: tuple[ApplianceProcess, HostileUpstream], asker: Peer) -> None:
    _, upstream = escalating
    peer = asker
    upstream.handler = flood
    _ask(peer, "flood", max_tokens=8)
    answer = _answer(peer, "flood")
    assert answer["tier"] == "remote" and answer["finish_reason"] == "length", answer
    assert answer["text"] == ("word " * 8).strip()
    peer.drain(2)
    chunks = [m for m in peer.seen if m.topic == f"{BASE}/answer/stream"
              and m.json()["id"] == "flood"]
    assert 0 < len(chunks) <= 8

    upstream.handler = events(_chunk("x" * 200_000))  # one chunk, under the line limit
    _ask(peer, "big", max_tokens=8)
    big = _answer(peer, "big")
    assert big["tier"] == "remote" and big["finish_reason"] == "length"
    assert big["text"] == "x" * 8 * 16  # 16 bytes per token of the budget

    upstream.handler = events(_chunk("y" * (8 << 20)))  # one line of 8 MB: never buffered
    _ask(peer, "huge", max_tokens=8)
    huge = _answer(peer, "huge")
    assert huge["tier"] == "local"
    assert _fallback(huge) == "the server's stream is malformed: a line longer than 262144 bytes"
    peer.drain(1)
    assert max(len(m.payload) for m in peer.seen) < 64 * 1024


@pytest.mark.slow
def test_an_upstream_error_body_never_leaves_the_device(
        escalating: tuple[ApplianceProcess, HostileUpstream], asker: Peer) -> None:
    app, upstream = escalating
    peer, secret = asker, SECRET

    async def refuse(request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}",
                                            "type": "invalid_request_error"}}, status=401)

    upstream.handler = refuse
    _ask(peer, "auth")
    answer = _answer(peer, "auth")
    assert answer["tier"] == "local"
    assert _fallback(answer) == "upstream answered 401 (auth)"
    # The retained state may still hold an error of an earlier test's upstream: wait for ours.
    state = peer.wait_for(lambda m: _escalation_state(
        m, lambda e: e.get("error") == "upstream answered 401 (auth)"))
    assert state.json()["escalation"]["error"] == "upstream answered 401 (auth)"
    peer.drain(1)
    assert not [m.topic for m in peer.seen if secret.encode() in m.payload]
    assert secret not in (app.workdir / f"run-{app.runs}.log").read_text()


def test_a_secret_is_redacted_from_every_log_line_whoever_logs_it() -> None:
    import logging

    secret = "sk-redact-" + os.urandom(6).hex()
    out = io.StringIO()
    logs.configure("info", "json", out)
    logs.add_secret(secret)
    logs.add_secret("ab")  # too short to redact without mangling the log
    logs.get_logger("test").info("table_ready")
    logs.get_logger("test").warning("escalation_failed", error=f"key {secret} refused",
                                    nested={"list": [f"Bearer {secret}"]})
    logging.getLogger("httpx").warning("sent %s", secret)  # a library's own line
    try:
        raise ValueError(f"Incorrect API key provided: {secret}")
    except ValueError:
        logs.get_logger("test").exception("crashed")
    text = out.getvalue()
    assert secret not in text
    assert text.count(logs.REDACTED) == 4, text
    assert "table_ready" in text and '"event": "crashed"' in text


def test_an_appliance_upstream_is_cut_at_the_local_budget_too() -> None:
    """Another appliance over MQTT that streams past our budget is cancelled and cut."""
    sent: list[Outgoing] = []
    chunks: list[Chunk] = []

    async def scenario() -> Completion:
        remote = MqttGenerator("appliance/big/ask", "appliance/t1/reply", sent.append,
                               first_token_timeout_s=5, timeout_s=10)
        asked = asyncio.create_task(remote.generate(ChatRequest("Hi.", max_tokens=4, id="m"),
                                                    chunks.append))
        await eventually_async(lambda: sent, 10, "the ask sent upstream", 0.01)
        for seq in range(50):
            remote.on_message(remote.stream_topic, json.dumps(
                {"id": "m", "seq": seq, "delta": "word "}).encode())
        remote.on_message(f"{remote.reply_base}/m", json.dumps(
            {"id": "m", "text": "word " * 50, "finish_reason": "cancelled", "tokens": 50,
             "ttft_ms": float("nan")}).encode())
        return await asked

    answer = asyncio.run(scenario())
    assert len(chunks) == 4 and answer.text == "word word word word"
    assert answer.finish_reason == "length" and answer.tokens == 4 and answer.ttft_ms == 0.0
    assert [m.topic for m in sent] == ["appliance/big/ask", "appliance/big/cmd/cancel"]

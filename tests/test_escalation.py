"""Escalation to a bigger model: a real llama_cpp.server, a real mosquitto, ``appliance run``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BASE, STORY, fragments, service_config
from tests.model_server import ALIAS, ModelServer
from tests.services import ApplianceProcess, Broker, Message, Peer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[ModelServer]:
    """One server for the tests that only ask it (each start costs seconds of CPU).

    It wants an API key (:data:`KEYED`), as a site's server would: the key test reads
    what the module's device did with it.
    """
    s = ModelServer(model_path, tmp_path_factory.mktemp("server") / "server.log",
                    api_key="sk-test-" + os.urandom(8).hex())
    s.start()
    yield s
    s.kill()


@pytest.fixture
def own_server(tmp_path: Path, model_path: Path) -> Iterator[ModelServer]:
    """A server of the test's own, for a test that kills it."""
    s = ModelServer(model_path, tmp_path / "server.log")
    s.start()
    yield s
    s.kill()


KEYED = "  api_key_env: BIG_KEY\n"
"""The escalation lines for the module's :func:`server`; the key is in ``$BIG_KEY``."""


def _escalation(endpoint: str, extra: str = "") -> str:
    return (f"escalation:\n  enabled: true\n  endpoint: {endpoint}\n  model: {ALIAS}\n"
            "  first_token_timeout_s: 15\n  timeout_s: 90\n"
            "  route:\n    keywords: [explain why]\n    min_words: 40\n" + extra)


@pytest.fixture(scope="module")
def asker(tmp_path_factory: pytest.TempPathFactory, model_path: Path,
          server: ModelServer) -> Iterator[tuple[ApplianceProcess, Peer]]:
    """One ``appliance run`` escalating to the module's server, as ``start`` makes it, a peer.

    For the tests that only ask it (each with its own request ids): one start, not one each.
    It escalates an answer whose first 8 tokens are unsure (``confidence_below: 0.0``,
    which every answer is): a question asked for fewer tokens stays local all the same.
    """
    home = tmp_path_factory.mktemp("asker")
    broker = Broker(home / "broker")
    broker.start()
    overrides = fragments(rules=_escalation(server.endpoint,
                                            "    confidence_below: 0.0\n" + KEYED))
    app = ApplianceProcess(home, service_config(home, broker.port, overrides,
                                                overrides.pop("+rules", ())),
                           {"BIG_KEY": str(server.api_key)})
    try:
        app.start()
        peer = Peer(broker.port, [f"{BASE}/#", "replies/#", "homeassistant/#"])
        yield app, peer
        peer.close()
    finally:
        app.close()
        broker.stop()


def _answer(peer: Peer, request_id: str, timeout: float = 90) -> Message:
    return peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                         and m.json().get("id") == request_id, timeout)


def _chunks(peer: Peer, request_id: str) -> list[dict[str, object]]:
    return [m.json() for m in peer.seen if m.topic == f"{BASE}/answer/stream"
            and m.json()["id"] == request_id]


def test_tier_remote_is_answered_by_the_server_and_streamed(
        asker: tuple[ApplianceProcess, Peer]) -> None:
    _, peer = asker
    peer.publish(f"{BASE}/ask", json.dumps({"id": "r", "text": "Name a colour.",
                                            "tier": "remote", "max_tokens": 16}))
    answer = _answer(peer, "r").json()
    assert answer["tier"] == "remote" and answer["model"] == ALIAS
    assert answer["escalation"] == {"reason": "asked"}
    chunks = _chunks(peer, "r")
    assert chunks and "".join(str(c["delta"]) for c in chunks).strip() == answer["text"]


def test_a_keyword_escalates_and_a_short_question_stays_local(
        asker: tuple[ApplianceProcess, Peer]) -> None:
    _, peer = asker
    peer.publish(f"{BASE}/ask", json.dumps({"id": "k", "text": "Explain why the sky is blue.",
                                            "max_tokens": 12}))
    # 6 tokens: fewer than the 8 whose confidence would escalate it (see asker)
    peer.publish(f"{BASE}/ask", json.dumps({"id": "s", "text": "Hi.", "max_tokens": 6}))
    hard, short = _answer(peer, "k").json(), _answer(peer, "s").json()
    assert hard["tier"] == "remote" and hard["escalation"]["reason"] == "keywords"
    assert short["tier"] == "local" and "escalation" not in short


def test_the_server_killed_mid_stream_gives_one_local_answer(
        start: Callable[..., ApplianceProcess], peer: Peer, own_server: ModelServer) -> None:
    start(root=_escalation(own_server.endpoint))
    # 120 tokens: the server is still writing when it is killed after the third chunk, and
    # the local answer that follows is the longest generation of the module.
    peer.publish(f"{BASE}/ask", json.dumps({"id": "cut", "text": STORY, "tier": "remote",
                                            "max_tokens": 120}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream" and m.json()["id"] == "cut"
                  and m.json()["seq"] >= 2)
    own_server.kill()
    answer = _answer(peer, "cut").json()
    assert answer["tier"] == "local" and answer["escalation"]["reason"] == "asked"
    assert answer["escalation"]["fallback"]
    peer.drain(2)
    assert len([m for m in peer.seen if m.topic == f"{BASE}/answer"]) == 1
    chunks = _chunks(peer, "cut")
    restart = next(i for i, c in enumerate(chunks) if c.get("restart"))
    assert "".join(str(c["delta"]) for c in chunks[restart:]).strip() == answer["text"]


def test_a_server_that_is_down_falls_back_then_is_skipped(
        start: Callable[..., ApplianceProcess], peer: Peer, tmp_path: Path,
        model_path: Path) -> None:
    down = ModelServer(model_path, tmp_path / "server.log")  # never started: nothing listens
    start(root=_escalation(down.endpoint, "  breaker_failures: 1\n  breaker_s: 600\n"))
    peer.publish(f"{BASE}/ask", json.dumps({"id": "d1", "text": "Hi.", "tier": "remote",
                                            "max_tokens": 4}))
    first = _answer(peer, "d1").json()
    assert first["tier"] == "local" and "fallback" in first["escalation"]
    assert first["total_ms"] < 15000 + 60000  # first_token_timeout_s plus the local answer
    state = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                          and m.json().get("escalation", {}).get("open")).json()
    assert state["escalation"]["model"] == ALIAS
    peer.publish(f"{BASE}/ask", json.dumps({"id": "d2", "text": "Hi.", "tier": "remote",
                                            "max_tokens": 4}))
    second = _answer(peer, "d2").json()
    assert "skipped" in second["escalation"]["fallback"]


def test_toy_mode_never_escalates(start: Callable[..., ApplianceProcess], peer: Peer,
                                  server: ModelServer) -> None:
    before = server.log.stat().st_size  # the module's server: what it logged before is not ours
    start(root=_escalation(server.endpoint, KEYED) + "voice:\n  kid_safe: true\n",
          BIG_KEY=str(server.api_key))
    peer.publish(f"{BASE}/ask", json.dumps({"id": "toy", "text": "Explain why it rains.",
                                            "tier": "remote", "max_tokens": 6}))
    answer = _answer(peer, "toy").json()
    assert answer["tier"] == "local" and "escalation" not in answer
    log = server.log.read_bytes()[before:].decode(errors="replace")
    assert "/v1/chat/completions" not in log


def test_the_api_key_is_sent_but_never_shown(
        asker: tuple[ApplianceProcess, Peer], server: ModelServer) -> None:
    app, peer = asker  # the module's server wants the key; the device has it in $BIG_KEY
    secret = str(server.api_key)
    peer.publish(f"{BASE}/ask", json.dumps({"id": "key", "text": "Hi.", "tier": "remote",
                                            "max_tokens": 4}))
    answer = _answer(peer, "key").json()
    assert answer["tier"] == "remote"  # the server accepted the key
    worker = Path(f"/proc/{app.worker_pid()}/environ").read_bytes()
    assert secret.encode() not in worker
    time.sleep(0.5)
    assert secret not in (app.workdir / f"run-{app.runs}.log").read_text()
    assert not [m for m in peer.seen if secret.encode() in m.payload]


def test_low_confidence_cancels_the_local_answer_early_and_escalates(
        asker: tuple[ApplianceProcess, Peer]) -> None:
    _, peer = asker  # its device escalates below a confidence of 0.0
    peer.publish(f"{BASE}/ask", json.dumps({"id": "unsure", "text": STORY,
                                            "max_tokens": 24}))
    answer = _answer(peer, "unsure").json()
    assert answer["tier"] == "remote", answer
    escalation = answer["escalation"]
    assert escalation["reason"] == "confidence" and escalation["confidence"] < 0.0
    assert escalation["local_tokens"] == 7  # cut after the 8 watched tokens, not 24

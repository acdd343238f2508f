"""``appliance run`` against a real mosquitto, with real paho peers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BASE, STORY, _config
from tests.helpers import eventually, keep_notify_drained
from tests.services import ApplianceProcess, Broker, Message, Peer

pytestmark = pytest.mark.slow  # `appliance run` as a process


@pytest.fixture(scope="module")
def shared(module_start: Callable[..., ApplianceProcess]) -> ApplianceProcess:
    """One ``appliance run`` of the ``start`` fixture's device for the tests that only ask it.

    Each of them waits for its own answers, so it leaves the device idle for the next.
    Its budget is 120 tokens (the sensor test's alerts), and it runs under a 1 s
    systemd watchdog (the notify test), which the other tests do not see.
    """
    app = module_start({"llm": {"max_tokens": 120}}, WATCHDOG_USEC="1000000")
    keep_notify_drained(app, record=True)  # it runs for several tests: datagrams must not pile up
    return app


@pytest.fixture
def asker(shared: ApplianceProcess, module_broker: Broker) -> Iterator[Peer]:
    """A fresh peer of :func:`shared`'s device (it sees only what is retained, and what is new)."""
    p = Peer(module_broker.port, [f"{BASE}/#", "replies/#", "homeassistant/#"])
    yield p
    p.close()


def _answer(peer: Peer, request_id: str, topic: str = f"{BASE}/answer",
            timeout: float = 60) -> Message:
    return peer.wait_for(lambda m: m.topic == topic and m.json().get("id") == request_id,
                         timeout)


def _stream_text(peer: Peer, request_id: str) -> tuple[list[int], str]:
    chunks = [m.json() for m in peer.seen if m.topic == f"{BASE}/answer/stream"
              and m.json()["id"] == request_id]
    return [c["seq"] for c in chunks], "".join(c["delta"] for c in chunks)


def test_response_topic_and_correlation_data(asker: Peer) -> None:
    asker.publish(f"{BASE}/ask", json.dumps({"id": "q1", "text": "What is two plus two?",
                                             "max_tokens": 24}),
                  response_topic="replies/me", correlation=b"\x00corr-42")
    reply = _answer(asker, "q1", "replies/me")
    assert reply.correlation == b"\x00corr-42"
    body = reply.json()
    assert body["tokens"] > 0 and body["source"] == "mqtt"
    assert body["finish_reason"] in ("stop", "length")
    assert {"id", "text", "tokens", "finish_reason", "ttft_ms", "tokens_per_s",
            "throttle_level", "source", "model"} <= set(body)


def test_plain_text_ask_streams_in_order(asker: Peer) -> None:
    asker.publish(f"{BASE}/ask", "What is the capital of France?")
    answer = asker.wait_for(lambda m: m.topic == f"{BASE}/answer").json()
    seqs, text = _stream_text(asker, answer["id"])
    assert seqs == list(range(len(seqs))) and seqs
    assert text.strip() == answer["text"]
    assert asker.wait_for(lambda m: m.topic == f"{BASE}/status").payload == b"online"
    state = asker.wait_for(lambda m: m.topic == f"{BASE}/state" and m.json()["state"] == "idle")
    assert state.retain or state.json()["model"]
    discovery = asker.wait_for(lambda m: m.topic == "homeassistant/device/t1/config").json()
    assert discovery["availability"][0]["topic"] == f"{BASE}/status"
    assert {"state", "temp_c", "throttle_level", "answer", "ask", "power_w"} <= set(
        discovery["cmps"])
    assert all(c["qos"] == 1 for c in discovery["cmps"].values())  # HA < 2026.5.2 needs it here
    assert discovery["cmps"]["ask"]["min"] == 1


def test_every_bad_input_gets_an_error_and_service_goes_on(
        start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    start({"mqtt": {"ask_rate_per_min": 3, "queue_size": 1}, "llm": {"max_tokens": 48}})
    bad = [
        (f"{BASE}/ask", b"{not json", "invalid JSON"),
        (f"{BASE}/ask", b"\xff\xfe bad", "not valid UTF-8"),
        (f"{BASE}/ask", b"x" * 5000, "over the limit of 4096"),
        (f"{BASE}/ask", b"   ", "the question is empty"),
        (f"{BASE}/ask", json.dumps({"id": "w1", "text": 5}).encode(), "text must be a string"),
        (f"{BASE}/ask", json.dumps({"id": "w2", "text": "hi", "max_tokens": "many"}).encode(),
         "max_tokens must be an integer"),
        (f"{BASE}/event/unknown", b"{}", "unknown event 'unknown'"),
        (f"{BASE}/event/greenhouse", b"[1, 2]", "expected a JSON object"),
        (f"{BASE}/cmd/cancel", b'{"id": "nope"}', "no queued or running request"),
    ]
    for topic, payload, _ in bad:
        peer.publish(topic, payload)
    errors = [peer.wait_for(lambda m, w=want: m.topic == f"{BASE}/error"
                            and w in m.json()["error"], 30).json() for _, _, want in bad]
    assert [e["topic"] for e in errors] == [t for t, _, _ in bad]
    assert errors[4]["id"] == "w1" and errors[5]["id"] == "w2"
    # queue full: one running, one queued, the third is refused
    for i in range(3):
        peer.publish(f"{BASE}/ask", json.dumps({"id": f"f{i}", "text": STORY,
                                                "max_tokens": 48}), client="flood")
        if i == 0:
            peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    full = peer.wait_for(lambda m: m.topic == f"{BASE}/error"
                         and "queue full" in m.payload.decode())
    assert full.json()["id"] == "f2"
    peer.publish(f"{BASE}/ask", json.dumps({"id": "f3", "text": "hi"}), client="flood")
    limited = peer.wait_for(lambda m: m.topic == f"{BASE}/error"
                            and "rate limited" in m.payload.decode())
    assert limited.json()["id"] == "f3"
    _answer(peer, "f0")
    _answer(peer, "f1")
    peer.publish(f"{BASE}/ask", json.dumps({"id": "good", "text": "Name a colour."}))
    assert _answer(peer, "good").json()["tokens"] > 0


def test_cancel_a_running_request(asker: Peer) -> None:
    asker.publish(f"{BASE}/ask", json.dumps({"id": "long", "text": STORY, "max_tokens": 120}))
    asker.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    asker.publish(f"{BASE}/cmd/cancel", json.dumps({"id": "long"}))
    assert _answer(asker, "long").json()["finish_reason"] == "cancelled"


def test_broker_restart_during_generation_loses_no_answer(
        start: Callable[..., ApplianceProcess], peer: Peer, broker: Broker) -> None:
    app = start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "outage", "text": STORY, "max_tokens": 60}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    broker.stop()
    log = app.workdir / f"run-{app.runs}.log"
    eventually(lambda: '"disconnected"' in log.read_text(), 30, "logged loss of the broker")
    broker.start()
    answer = _answer(peer, "outage", timeout=90).json()
    assert answer["tokens"] > 0


def test_worker_killed_mid_generation_is_restarted_and_answers(
        start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    app = start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "crash", "text": STORY, "max_tokens": 40}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    first_worker = app.worker_pid()
    os.kill(first_worker, signal.SIGKILL)
    answer = _answer(peer, "crash", timeout=90).json()
    assert answer["finish_reason"] in ("stop", "length") and answer["tokens"] > 0
    assert app.worker_pid() != first_worker


def test_supervisor_killed_with_a_journaled_request_answers_once(
        start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    app = start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "once", "text": STORY, "max_tokens": 40}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    app.kill()
    assert peer.wait_for(lambda m: m.topic == f"{BASE}/status"
                         and m.payload == b"offline", 30)  # the Last Will
    app.start()
    _answer(peer, "once", timeout=90)
    peer.drain(3)
    answers = [m for m in peer.seen if m.topic == f"{BASE}/answer" and m.json()["id"] == "once"]
    assert len(answers) == 1


def test_sigterm_shuts_down_cleanly(start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    app = start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "late", "text": STORY, "max_tokens": 400}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    began = time.monotonic()
    assert app.terminate() == 0
    assert time.monotonic() - began < 10
    offline = peer.wait_for(lambda m: m.topic == f"{BASE}/status" and m.payload == b"offline")
    assert offline is not None
    assert app.notify is not None
    app.notify.wait_for("STOPPING=1", 5)


def test_sensor_rules_threshold_and_burst(asker: Peer) -> None:
    peer = asker  # on the shared device: its budget of 120 tokens is the alerts' budget too
    peer.publish(f"{BASE}/event/greenhouse", json.dumps({"temperature": 30}))
    peer.publish(f"{BASE}/event/greenhouse", json.dumps({"temperature": 45}))
    alert = peer.wait_for(lambda m: m.topic == f"{BASE}/alert").json()
    assert alert["source"] == "sensor" and alert["rule"] == "greenhouse_hot"
    peer.drain(2)
    assert len([m for m in peer.seen if m.topic == f"{BASE}/alert"]) == 1  # 30 was below
    # keep the model busy, then send a burst: the rule's events coalesce into one generation
    peer.publish(f"{BASE}/ask", json.dumps({"id": "busy", "text": STORY, "max_tokens": 120}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    for i in range(1000):
        peer.client.publish(f"{BASE}/event/burst",
                            json.dumps({"temperature": 41 + i % 50}), qos=1)
    _answer(peer, "busy")
    peer.drain(8)
    bursts = [m for m in peer.seen if m.topic == f"{BASE}/alert" and m.json()["rule"] == "burst"]
    assert len(bursts) == 1  # one generation for the whole burst
    assert not [m for m in peer.seen if m.topic == f"{BASE}/error"]
    depths = [m.json()["queue_depth"] for m in peer.seen if m.topic == f"{BASE}/state"]
    assert max(depths) <= 1


def test_systemd_notify_ready_status_and_watchdog(shared: ApplianceProcess) -> None:
    assert shared.notify is not None  # started with WATCHDOG_USEC=1000000
    received = shared.notify.received  # filled by keep_notify_drained's thread
    assert any("READY=1" in d.splitlines() for d in received)
    mark = len(received)
    eventually(lambda: any("WATCHDOG=1" in d.splitlines() for d in received[mark:]), 5,
               "a WATCHDOG=1 within 5 s")
    assert any(line.startswith("STATUS=") for d in received
               for line in d.splitlines())


def _state_at(peer: Peer, level: str, after: int) -> dict[str, object]:
    """The first state at ``level`` from the ``after``-th message on (levels come back)."""
    return peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                         and m.json()["throttle_level"] == level, 20, after).json()


def test_thermal_ramp_end_to_end(start: Callable[..., ApplianceProcess], peer: Peer,
                                 tmp_path: Path) -> None:
    zone = tmp_path / "temp"
    # Heat alone sets the threads here: a CPU busy with the other tests would let the
    # contention controller take one more away (tests/test_contention.py tests that).
    start({"llm": {"adaptive_threads": False}}, thermal="  interval_s: 0.1\n")

    def heat(celsius: float) -> int:
        """Set the zone; how many messages had come before."""
        seen = len(peer.seen)
        zone.write_text(f"{round(celsius * 1000)}\n")
        return seen

    peer.wait_for(lambda m: m.topic == f"{BASE}/state")  # as it starts, before any heat
    normal = _state_at(peer, "normal", heat(60))
    assert normal["max_tokens"] == 400
    warm_state = _state_at(peer, "warm", heat(72))  # warm costs parallelism, not threads
    assert warm_state["max_tokens"] == 400 and warm_state["n_threads"] == normal["n_threads"]
    peer.publish(f"{BASE}/ask", json.dumps({"id": "w", "text": STORY, "max_tokens": 8}))
    warm = _answer(peer, "w").json()
    assert warm["throttle_level"] == "warm" and warm["n_threads"] == normal["n_threads"]
    hot = _state_at(peer, "hot", heat(77))  # hot costs threads, not words
    assert hot["max_tokens"] == 400 and hot["n_threads"] == 2
    mark = len(peer.drain(0.3))
    heat(73)  # within the hysteresis: still hot
    later = peer.drain(0.6)[mark:]
    assert all(m.json()["throttle_level"] == "hot" for m in later
               if m.topic == f"{BASE}/state")
    peer.publish(f"{BASE}/ask", json.dumps({"id": "cut", "text": STORY}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream" and m.json()["id"] == "cut")
    hotter = heat(82)  # a generation under way is cut to the critical budget
    cut = _answer(peer, "cut").json()
    assert cut["finish_reason"] == "throttled" and cut["tokens"] < 96
    assert _state_at(peer, "critical", hotter)["max_tokens"] == 48
    asked_at = len(peer.seen)
    peer.publish(f"{BASE}/event/greenhouse", json.dumps({"temperature": 45}))
    deferred = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                             and m.json()["queue_depth"] == 1, after=asked_at).json()
    assert deferred["throttle_level"] == "critical"
    assert _state_at(peer, "emergency", heat(86))["max_tokens"] == 0
    peer.publish(f"{BASE}/ask", json.dumps({"id": "hot", "text": "Hello?"}))
    fixed = _answer(peer, "hot").json()
    assert fixed["finish_reason"] == "throttled" and fixed["tokens"] == 0
    assert fixed["text"] == "I'm cooling down, please ask again in a minute."
    assert not [m for m in peer.drain(0.3) if m.topic == f"{BASE}/alert"]  # still deferred
    assert _state_at(peer, "hot", heat(78))
    alert = peer.wait_for(lambda m: m.topic == f"{BASE}/alert").json()  # answered once cooler
    assert alert["rule"] == "greenhouse_hot" and alert["throttle_level"] == "hot"
    assert alert["n_threads"] == 2
    assert _state_at(peer, "normal", heat(65))["max_tokens"] == 400


def test_password_from_a_file_and_never_logged(tmp_path: Path, model_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "t1", "s3cret-pw"],
                   check=True, capture_output=True)
    passwd.chmod(0o600)
    secured = Broker(tmp_path / "secure", f"allow_anonymous false\npassword_file {passwd}\n")
    secured.start()
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret-pw\n")
    config = _config(tmp_path, model_path, secured.port,
                     f"  username: t1\n  password_file: {secret}\n")
    app = ApplianceProcess(tmp_path, config, {})
    try:
        app.start()
        peer = Peer(secured.port, [f"{BASE}/answer"], auth=("t1", "s3cret-pw"))
        peer.publish(f"{BASE}/ask", json.dumps({"id": "auth", "text": "Hi", "max_tokens": 16}))
        assert _answer(peer, "auth").json()["tokens"] > 0
        peer.close()
        app.terminate()
        assert "s3cret-pw" not in (tmp_path / "run-1.log").read_text()
    finally:
        app.close()
        secured.stop()

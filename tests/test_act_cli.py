"""``appliance act`` and ``appliance world`` with a broker that misbehaves: one line each.

A paho peer stands in for the appliance (or for a stranger on its topics), so
these tests need mosquitto but no model.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BASE, run_cli, write_config
from tests.services import Broker, Peer

CONNACK = b"\x20\x03\x00\x00\x00"
"""An MQTT v5 CONNACK: session not present, success, no properties."""


def _config(tmp_path: Path, port: int) -> str:
    return str(write_config(tmp_path / "config.yaml", {"mqtt": {"port": port}}))


def _one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The command's error: non-zero exit, one line on stderr naming ``expected``."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in expected:
        assert part in lines[0]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("payload", "problem"), [
    ("{not json", "holds no JSON object"),
    ('["a", "list"]', "holds no JSON object"),
    ('{"greenhouse": {"fields": {"temperature": 30}}}', "'greenhouse' has no 'at' time"),
    ('{"greenhouse": {"at": 1700000000, "fields": 30}}', "'greenhouse' has no 'fields' object"),
    ('{"greenhouse": 30}', "'greenhouse' is not an object"),
])
def test_a_malformed_retained_world_is_one_line(broker: Broker, tmp_path: Path, payload: str,
                                               problem: str) -> None:
    subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-r",
                    "-t", f"{BASE}/world", "-m", payload], check=True, timeout=30)
    world = run_cli("--config", _config(tmp_path, broker.port), "world")
    _one_line(world, f"{BASE}/world", problem)


class _Act:
    """``appliance act vent_open`` running, and the id of the request it proposed."""

    def __init__(self, config: str, peer: Peer) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", config, "act", "vent_open"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proposal = peer.wait_for(lambda m: m.topic == f"{BASE}/cmd/act", timeout=60)
        self.request_id = proposal.json()["id"]

    def result(self) -> subprocess.CompletedProcess[str]:
        out, err = self.process.communicate(timeout=60)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err)


@pytest.fixture
def appliance_peer(broker: Broker) -> Iterator[Peer]:
    """A paho peer in the appliance's place: it hears the proposals of ``appliance act``."""
    peer = Peer(broker.port, [f"{BASE}/cmd/act"])
    yield peer
    peer.close()


@pytest.mark.slow
def test_foreign_messages_on_the_error_topic_are_skipped(
        broker: Broker, appliance_peer: Peer, tmp_path: Path) -> None:
    act = _Act(_config(tmp_path, broker.port), appliance_peer)
    for foreign in (b"\xffnot json", b'["a", "list"]', b"{" * 5000 + b"}" * 5000,
                    json.dumps({"id": "someone-else", "error": "not yours"}).encode()):
        appliance_peer.publish(f"{BASE}/error", foreign)
    appliance_peer.publish(f"{BASE}/action", json.dumps(
        {"id": act.request_id, "action": "vent_open", "verdict": "done"}))
    done = act.result()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip() == "vent_open: done"


@pytest.mark.slow
@pytest.mark.parametrize(("topic", "body", "problem"), [
    ("error", {}, "has no 'error' text"),
    ("error", {"error": ["a", "list"]}, "has no 'error' text"),
    ("action", {"verdict": "done"}, "no 'action' and 'verdict' strings"),
    ("action", {"action": "vent_open", "verdict": None}, "no 'action' and 'verdict' strings"),
])
def test_a_malformed_answer_to_our_request_is_one_line(
        broker: Broker, appliance_peer: Peer, tmp_path: Path, topic: str,
        body: dict[str, object], problem: str) -> None:
    act = _Act(_config(tmp_path, broker.port), appliance_peer)
    appliance_peer.publish(f"{BASE}/{topic}", json.dumps({"id": act.request_id, **body}))
    _one_line(act.result(), f"{BASE}/{topic}", problem)


def _suback(subscribe: bytes, reason: int) -> bytes:
    """An MQTT v5 SUBACK to the SUBSCRIBE packet ``subscribe``: ``reason`` for every filter."""
    at = 1
    while subscribe[at] & 0x80:  # the remaining length (a variable byte integer)
        at += 1
    packet_id, at = subscribe[at + 1: at + 3], at + 3
    props, shift = 0, 0
    while True:  # the property length
        props |= (subscribe[at] & 0x7F) << shift
        shift, at = shift + 7, at + 1
        if not subscribe[at - 1] & 0x80:
            break
    at += props
    filters = 0
    while at < len(subscribe):  # each filter: a length, the topic, an options byte
        at += 2 + int.from_bytes(subscribe[at: at + 2], "big") + 1
        filters += 1
    body = packet_id + b"\x00" + bytes([reason]) * filters
    return bytes([0x90, len(body)]) + body


@contextlib.contextmanager
def _fake_broker(suback: int | None) -> Iterator[int]:
    """A TCP server on loopback that accepts CONNECT, answers CONNACK, and then only reads.

    ``suback``: answer the SUBSCRIBE with this reason code instead of never.
    """
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            client, _ = server.accept()
            with client:
                client.recv(4096)  # CONNECT
                client.sendall(CONNACK)
                while packet := client.recv(4096):  # SUBSCRIBE, PINGREQ, DISCONNECT
                    if suback is not None and packet[0] == 0x82:
                        client.sendall(_suback(packet, suback))

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["act", "vent_open"], ["world"]])
def test_a_broker_that_never_subacks_is_one_line(tmp_path: Path, command: list[str]) -> None:
    with _fake_broker(suback=None) as port:  # waited out: 2 s, not the default 10
        result = run_cli("--config", _config(tmp_path, port), *command, "--wait", "2")
    _one_line(result, "no SUBACK from the broker at", "within 2 s", f"{BASE}/")


@pytest.mark.slow
def test_a_refused_subscription_is_one_line(tmp_path: Path) -> None:
    with _fake_broker(suback=0x87) as port:  # Not authorized: what an ACL answers
        result = run_cli("--config", _config(tmp_path, port), "world")
    _one_line(result, "refused the subscription to", f"{BASE}/world (Not authorized)")

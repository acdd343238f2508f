"""A fleet: two ``appliance run`` sharing one queue of site asks on one mosquitto.

Two are a fleet already (the broker hands the shared subscription's asks round);
each more device only costs another model start.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import own_device
from tests.services import ApplianceProcess, Broker, Peer

pytestmark = pytest.mark.slow

SITE = "site/greenhouse"


def _device(tmp_path: Path, port: int, name: str) -> ApplianceProcess:
    return own_device(tmp_path, name, port, {
        "mqtt": {"discovery": {"enabled": False}, "stream_answers": False},
        "fleet": {"group": "greenhouse", "topic": SITE}})


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, model_path: Path, module_broker: Broker,
          ) -> Iterator[list[ApplianceProcess]]:
    """Two devices, started once for the module: each test leaves them idle, both running."""
    home = tmp_path_factory.mktemp("fleet")
    devices = [_device(home, module_broker.port, f"d{i}") for i in range(2)]
    for device in devices:
        device.start()
    yield devices
    for device in devices:
        device.close()


def test_twelve_site_asks_are_answered_once_each_by_several_devices(
        fleet: list[ApplianceProcess], module_broker: Broker) -> None:
    peer = Peer(module_broker.port, [f"{SITE}/answer"])
    try:
        for i in range(12):
            peer.client.publish(f"{SITE}/ask", json.dumps(
                {"id": f"s{i}", "text": "Say hi.", "max_tokens": 6}), qos=1)
        for i in range(12):
            peer.wait_for(lambda m, i=i: m.json()["id"] == f"s{i}", 120)
        peer.drain(3)
        answers = [m.json() for m in peer.seen]
        assert sorted(a["id"] for a in answers) == sorted(f"s{i}" for i in range(12))
        by_device = Counter(a["device_id"] for a in answers)
        assert len(by_device) >= 2, by_device
    finally:
        peer.close()


def test_a_device_killed_mid_answer_answers_its_site_ask_once_after_restart(
        fleet: list[ApplianceProcess], module_broker: Broker) -> None:
    peer = Peer(module_broker.port, [f"{SITE}/answer", "appliance/+/state"])
    try:
        peer.client.publish(f"{SITE}/ask", json.dumps(
            {"id": "long", "text": "Tell me a long story about a greenhouse.",
             "max_tokens": 60}), qos=1)
        busy = peer.wait_for(lambda m: m.topic.endswith("/state")
                             and m.json()["state"] == "thinking", 60)
        victim = next(d for d in fleet if f"/{d.config.parent.name}/" in busy.topic)
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        victim.start()
        peer.wait_for(lambda m: m.topic == f"{SITE}/answer" and m.json()["id"] == "long",
                      180)
        peer.drain(4)
        answers = [m.json() for m in peer.seen if m.topic == f"{SITE}/answer"]
        assert [a["id"] for a in answers] == ["long"]
    finally:
        peer.close()

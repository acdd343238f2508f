"""On the device: each answer's energy, and decode threads that follow the heat, live.

The PMIC is a recorded ``pmic_read_adc`` behind a stand-in ``vcgencmd``.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BASE, STORY
from tests.services import ApplianceProcess, Broker, Peer

pytestmark = pytest.mark.slow

RECORDED = Path(__file__).parent / "data" / "pmic_read_adc.txt"


def _vcgencmd(tmp_path: Path, output: str) -> Path:
    """The one stand-in allowed: the Pi's binary, printing a recorded ``pmic_read_adc``."""
    (tmp_path / "pmic.txt").write_text(output)
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\n"
                      f'if [ "$1" = pmic_read_adc ]; then cat {tmp_path / "pmic.txt"}; exit 0; fi\n'
                      "echo 'throttled=0x0'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture(scope="module")
def unmetered(module_start: Callable[..., ApplianceProcess]) -> ApplianceProcess:
    """One device without a power meter, whose decode threads follow its heat.

    Shared by the test of no meter (it only asks) and the test of the threads (it
    heats the zone and cools it back to normal, waiting for each): neither sees the
    other's part of the config, and the heat changes no answer's energy fields.
    """
    return module_start({"llm": {"n_threads": 2,  # more than warm's one (the default is one)
                                 "adaptive_threads": False}},  # heat alone (test_contention)
                        thermal="  interval_s: 0.1\n  levels:\n    - {name: normal, from_c: 0}\n"
                                "    - {name: warm, from_c: 70, n_threads: 1}\n",
                        root="power:\n  meter: none\n")


@pytest.fixture
def unmetered_peer(unmetered: ApplianceProcess, module_broker: Broker) -> Iterator[Peer]:
    """A fresh peer of :func:`unmetered`'s device."""
    p = Peer(module_broker.port, [f"{BASE}/#"])
    yield p
    p.close()


def _answer(peer: Peer, request_id: str) -> dict[str, object]:
    return peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                         and m.json()["id"] == request_id, 90).json()


def test_an_answer_carries_its_energy(start: Callable[..., ApplianceProcess], peer: Peer,
                                      tmp_path: Path) -> None:
    script = _vcgencmd(tmp_path, RECORDED.read_text())
    start(root=f"power:\n  meter: vcgencmd\n  vcgencmd: {script}\n  interval_s: 0.5\n")
    peer.publish(f"{BASE}/ask", json.dumps({"id": "e", "text": STORY, "max_tokens": 32}))
    answer = _answer(peer, "e")
    assert answer["energy_j"] > 0 and answer["avg_w"] > 0
    tokens = int(answer["tokens"])  # type: ignore[arg-type]
    assert abs(answer["tokens_per_j"] - tokens / answer["energy_j"]) < 0.01 * answer[
        "tokens_per_j"] + 0.001
    assert answer["ms_per_token"] > 0
    state = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                          and m.json()["power_w"] is not None).json()
    assert 2.0 < state["power_w"] < 15.0


def test_a_garbled_meter_is_one_warning_and_answers_go_on(
        start: Callable[..., ApplianceProcess], peer: Peer, tmp_path: Path) -> None:
    script = _vcgencmd(tmp_path, "this is not a PMIC report\n")
    app = start(root=f"power:\n  meter: vcgencmd\n  vcgencmd: {script}\n")
    peer.publish(f"{BASE}/ask", json.dumps({"id": "g", "text": "Hi.", "max_tokens": 8}))
    answer = _answer(peer, "g")
    assert "energy_j" not in answer and answer["ms_per_token"] > 0
    log = (tmp_path / f"run-{app.runs}.log").read_text()
    assert log.count('"power_meter_unreadable"') == 1


def test_no_meter_no_energy_fields(unmetered_peer: Peer) -> None:
    peer = unmetered_peer
    peer.publish(f"{BASE}/ask", json.dumps({"id": "n", "text": "Hi.", "max_tokens": 8}))
    answer = _answer(peer, "n")
    assert not {"energy_j", "avg_w", "tokens_per_j"} & set(answer)


def test_decode_threads_follow_the_heat_during_a_generation(
        unmetered: ApplianceProcess, unmetered_peer: Peer) -> None:
    peer = unmetered_peer
    zone = unmetered.workdir / "temp"
    normal = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                           and m.json()["state"] == "idle").json()
    assert normal["n_threads"] >= 1
    before = normal["n_threads"]
    peer.publish(f"{BASE}/ask", json.dumps({"id": "hot", "text": STORY, "max_tokens": 150}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream" and m.json()["id"] == "hot")
    heated_from = len(peer.seen)
    zone.write_text("72000\n")
    peer.wait_for(lambda m: m.topic == f"{BASE}/state" and m.json()["n_threads"] == 1
                  and m.json()["throttle_level"] == "warm", after=heated_from)
    hot = _answer(peer, "hot")
    assert hot["n_threads"] == 1 and hot["throttle_level"] == "warm"
    log = (unmetered.workdir / f"run-{unmetered.runs}.log").read_text()
    assert '"threads_changed"' in log  # the engine itself, between two tokens
    cooled_from = len(peer.seen)  # the state before the heat was normal too
    zone.write_text("50000\n")
    peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                  and m.json()["throttle_level"] == "normal" and m.json()["n_threads"] == before,
                  after=cooled_from)
    peer.publish(f"{BASE}/ask", json.dumps({"id": "cool", "text": "Hi.", "max_tokens": 6}))
    assert _answer(peer, "cool")["n_threads"] == before

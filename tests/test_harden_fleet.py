"""Fleet and shutdown hardening: a cloned device_id on one broker, and a quiet SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from appliance.mqtt.clash import SESSION_TAKEN_OVER, Clash
from tests.conftest import BASE, run_cli
from tests.helpers import eventually, own_device
from tests.services import ApplianceProcess, Broker, Peer


def _events(log: Path) -> list[dict[str, object]]:
    """The JSON lines of an ``appliance run`` log (anything else, e.g. native output, skipped)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            lines.append(event)
    return lines


def _clone(tmp_path: Path, port: int, name: str) -> ApplianceProcess:
    """A device of its own (data_dir, config) that calls itself ``t1``, like a cloned card."""
    return own_device(tmp_path, name, port, {"device_id": "t1"})


@pytest.fixture
def clones(tmp_path: Path, model_path: Path, broker: Broker) -> Iterator[list[ApplianceProcess]]:
    devices = [_clone(tmp_path, broker.port, name) for name in ("a", "b")]
    yield devices
    for device in devices:
        device.close()


def _connects(devices: list[ApplianceProcess]) -> int:
    return sum(1 for d in devices for e in _events(d.workdir / f"run-{d.runs}.log")
               if e.get("event") == "connected")


def _at(event: dict[str, object]) -> float:
    """When a log line was written (its ISO ``timestamp``), in seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _holds(devices: list[ApplianceProcess]) -> list[tuple[float, float]]:
    """``(waited, asked)`` for each takeover that a reconnect followed.

    ``waited``: seconds from the ``device_id_clash`` line to the device's next
    ``connected``; ``asked``: its ``retry_in_s``. Empty until every device has
    reconnected after a takeover of its own.
    """
    holds: list[tuple[float, float]] = []
    for device in devices:
        mine, clash = [], None
        for event in _events(device.workdir / f"run-{device.runs}.log"):
            if event.get("event") == "device_id_clash":
                clash = (_at(event), float(str(event["retry_in_s"])))
            elif event.get("event") == "connected" and clash is not None:
                mine.append((_at(event) - clash[0], clash[1]))
                clash = None
        if not mine:
            return []
        holds += mine
    return holds


def test_takeovers_name_the_clash_back_off_doubling_and_end_after_a_quiet_spell() -> None:
    async def scenario() -> None:
        over = asyncio.Event()
        clash = Clash(asyncio.get_running_loop(), "broker:1883", "appliance-t1", "t1", over.set,
                      over_s=0.05)
        # mosquitto just closes the connection: two quick drops are bad luck, the third a clash
        for _ in range(2):
            clash.connected()
            assert clash.dropped(True, 0, "") is None and clash.text is None
        clash.connected()
        assert clash.dropped(True, 0, "") == 5.0
        assert clash.text is not None and "'t1'" in clash.text and "fleet.md" in clash.text
        # while it is named, every drop is a takeover, and the wait doubles up to 300 s
        waits = []
        for _ in range(8):
            clash.connected()
            waits.append(clash.dropped(True, 0, ""))
        assert waits == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
        assert clash.dropped(False, 0, "") is None  # a failed attempt to connect is no drop
        # connected long enough without a takeover: the clash is over, the count starts again
        clash.connected()
        await asyncio.wait_for(over.wait(), 30)
        assert clash.text is None and clash.takeovers == 0
        assert clash.dropped(True, 0, "") is None
        # a broker that says so (EMQX, reason code 0x8E) is believed at once
        assert clash.dropped(True, SESSION_TAKEN_OVER, "Session taken over") == 5.0
        clash.cancel()

    asyncio.run(scenario())


@pytest.mark.slow
def test_two_devices_with_one_device_id_name_the_clash_and_back_off(
        clones: list[ApplianceProcess], broker: Broker) -> None:
    peer = Peer(broker.port, [f"{BASE}/state"])
    try:
        for device in clones:
            device.start()
        clash = peer.wait_for(lambda m: "device_id" in str(m.json().get("problems", {})
                                                           .get("mqtt", "")), 120).json()
        assert clash["state"] == "degraded"
        assert "'t1'" in clash["problems"]["mqtt"] and "fleet.md" in clash["problems"]["mqtt"]
        logged = [e for d in clones for e in _events(d.workdir / f"run-{d.runs}.log")
                  if e.get("event") == "device_id_clash"]
        assert logged and logged[0]["device_id"] == "t1"
        before = _connects(clones)
        # Without the backoff they took the session from each other every ~1-2 s. With it
        # each device stays away as long as its takeover asked (5 s, doubling) before it
        # reconnects: waited for until both have come back once, not a fixed window.
        holds = eventually(lambda: _holds(clones), 120, "reconnect after a takeover",
                           interval=0.2)
        assert all(waited >= asked - 0.1 for waited, asked in holds), holds
        assert _connects(clones) - before <= 8, _connects(clones) - before
        doctor = run_cli("--config", str(clones[0].config), "doctor")
        row = next(line for line in doctor.stdout.splitlines() if "device id" in line)
        assert row.startswith("fail") and "another client uses" in row, doctor.stdout
    finally:
        peer.close()


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["service", "whole-group"])
def test_a_clean_sigterm_logs_no_error_and_restarts_nothing(
        start: Callable[..., ApplianceProcess], tmp_path: Path, group: bool) -> None:
    app = start(extra="  discovery: {enabled: false}\n")
    assert app.proc is not None
    if group:  # what systemd does (KillMode=control-group): the worker gets it too
        os.killpg(app.proc.pid, signal.SIGTERM)
    else:
        app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(20) == 0
    events = _events(tmp_path / f"run-{app.runs}.log")
    assert any(e.get("event") == "stopped" for e in events)
    loud = [e for e in events if e.get("level") in ("error", "critical")]
    assert not loud, loud
    assert not [e for e in events if e.get("event") in ("part_restart", "worker_restart")]

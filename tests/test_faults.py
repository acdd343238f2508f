"""The device's own faults: a second instance, a hung or dying worker, no broker, a dead part."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bench.broker import LocalBroker, free_port
from appliance.config import load_settings
from appliance.generate.local import PING_ENV
from appliance.protocol.messages import Request
from appliance.service.supervisor import Supervisor
from tests.conftest import BASE, STORY, _config
from tests.helpers import eventually, eventually_async
from tests.services import ApplianceProcess, Broker, Message, Peer
from tests.speech import korean_model, sequence, speak

pytestmark = pytest.mark.slow


def _answer(peer: Peer, request_id: str, timeout: float = 90) -> Message:
    return peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                         and m.json().get("id") == request_id, timeout)


def test_a_second_instance_on_one_data_dir_refuses_to_start(
        start: Callable[..., ApplianceProcess], peer: Peer, tmp_path: Path) -> None:
    first = start()
    assert first.proc is not None
    second = subprocess.run([sys.executable, "-m", "appliance", "--config",
                             str(tmp_path / "config.yaml"), "run"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]
    assert f"pid {first.proc.pid}" in second.stderr
    for i in range(15):
        peer.client.publish(f"{BASE}/ask", json.dumps(
            {"id": f"q{i}", "text": "Say hi.", "max_tokens": 3}), qos=1)
    for i in range(15):
        _answer(peer, f"q{i}")
    peer.drain(2)
    answers = [m for m in peer.seen if m.topic == f"{BASE}/answer"]
    assert len(answers) == 15
    log = (tmp_path / f"run-{first.runs}.log").read_text()
    assert '"session_taken_over"' not in log  # the second one never connected


def test_a_hung_worker_is_killed_restarted_and_its_request_answered(
        start: Callable[..., ApplianceProcess], peer: Peer, tmp_path: Path) -> None:
    app = start(**{PING_ENV: "1"})  # found hung after 3 s instead of 15
    peer.publish(f"{BASE}/ask", json.dumps({"id": "stuck", "text": STORY, "max_tokens": 40}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream")
    hung = app.worker_pid()
    os.kill(hung, signal.SIGSTOP)
    degraded = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                             and "model" in m.json()["problems"], 60).json()
    assert "stopped responding" in degraded["problems"]["model"]
    answer = _answer(peer, "stuck").json()
    assert answer["finish_reason"] in ("stop", "length")  # the retry, on a new worker
    assert app.worker_pid() != hung
    log = (tmp_path / f"run-{app.runs}.log").read_text()
    assert '"worker_hung"' in log and f'"pid": {hung}' in log


def _kill_workers(app: ApplianceProcess, kills: int) -> None:
    """SIGKILL the model worker shortly after each of ``kills`` starts."""
    seen: set[int] = set()
    deadline = time.monotonic() + 60 * kills  # a guard against a worker that never restarts
    while len(seen) < kills:
        assert time.monotonic() < deadline, f"{len(seen)} of {kills} workers started"
        try:
            pid = app.worker_pid()
        except (IndexError, ValueError, FileNotFoundError):
            time.sleep(0.1)
            continue
        if pid not in seen:
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            seen.add(pid)
        time.sleep(0.1)


def test_a_worker_killed_in_a_loop_keeps_the_watchdog_fed_and_every_question_answered(
        start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    app = start(WATCHDOG_USEC="2000000")
    assert app.notify is not None
    for i in range(4):
        peer.client.publish(f"{BASE}/ask", json.dumps(
            {"id": f"k{i}", "text": "Say hi.", "max_tokens": 3}), qos=1)
    for _ in range(4):
        _kill_workers(app, 1)
        pings = sum("WATCHDOG=1" in d.splitlines() for d in app.notify.received)
        app.notify.wait_for_count("WATCHDOG=1", pings + 1)  # a ping came after this kill
    for i in range(4):
        body = _answer(peer, f"k{i}", 150).json()
        assert body["finish_reason"] in ("stop", "length", "error")
        if body["finish_reason"] == "error":
            assert "model" in body["error"]
    assert app.proc is not None and app.proc.poll() is None


def test_no_broker_at_boot_still_means_ready_and_voice_answers(
        tmp_path: Path, model_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    wav = sequence([speak("날씨", tmp_path / "a.wav")], tmp_path / "seq.wav")
    voice = (f"voice:\n  enabled: true\n  model_path: {korean_model()}\n  grammar: [날씨]\n"
             f"  source: {wav}\n  tts: none\n")
    config = _config(tmp_path, model_path, port, root=voice + "llm:\n  max_tokens: 24\n")
    app = ApplianceProcess(tmp_path, config)
    broker: LocalBroker | None = None
    try:
        app.start()  # waits for READY=1 with no broker anywhere
        journal = tmp_path / "data" / "journal.sqlite3"

        def outbox() -> list[bytes]:
            with sqlite3.connect(journal) as db:
                return [row[0] for row in db.execute(
                    "SELECT payload FROM outbox WHERE topic = ?", (f"{BASE}/answer",))]

        eventually(outbox, 90, "answer kept in the outbox")
        (waiting,) = outbox()  # answered offline, kept for the broker
        assert json.loads(waiting)["source"] == "voice"
        broker = LocalBroker(tmp_path / "late-broker", port=port)
        broker.start()
        peer = Peer(port, [f"{BASE}/#"])
        try:
            delivered = peer.wait_for(lambda m: m.topic == f"{BASE}/answer", 90).json()
            assert delivered["source"] == "voice"
        finally:
            peer.close()
    finally:
        app.close()
        if broker is not None:
            broker.stop()


def test_no_watchdog_ping_while_the_dispatcher_is_dead(
        tmp_path: Path, model_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch,
        ) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    # Restarts after 0.25, 0.5, 1 and 2 s instead of 1, 2, 4 and 8: each dead spell still
    # spans pings due every 0.2 s, and the crash loop gives up in 4 s, not 15.
    monkeypatch.setattr("appliance.service.parts.RESTART_START_S", 0.25)
    settings = load_settings(_config(tmp_path, model_path, broker.port))

    async def broken() -> Request:
        raise RuntimeError("a bug at the top of the dispatcher's loop")

    async def scenario() -> tuple[int, list[list[str]]]:
        supervisor = Supervisor(settings, tmp_path / "config.yaml")
        pings: list[list[str]] = []  # what was dead at each WATCHDOG=1
        monkeypatch.setattr(supervisor.notifier, "watchdog",
                            lambda: pings.append(supervisor.parts.dead()))
        running = asyncio.create_task(supervisor.run())
        await eventually_async(lambda: pings, 300, "WATCHDOG=1")
        monkeypatch.setattr(supervisor.dispatcher.queue, "get", broken)
        supervisor.dispatcher.submit(Request(id="wake", source="mqtt", text="hi"))
        return await asyncio.wait_for(running, 60), pings

    code, pings = asyncio.run(scenario())
    assert code == 1  # it kept crashing: the process gives up so that systemd restarts it
    assert pings and all(dead == [] for dead in pings)

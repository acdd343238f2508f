"""Regressions of the red team's MQTT findings, each against ``appliance run`` and mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.bench.broker import LocalBroker
from appliance.cli import main as cli_main
from appliance.hardware import OPENMP_SPINCOUNT
from appliance.protocol.messages import Outgoing
from appliance.service.journal import Journal
from tests.conftest import BASE, STORY, _config, run_cli
from tests.helpers import eventually, keep_notify_drained
from tests.services import ApplianceProcess, Broker, Message, Peer

pytestmark = pytest.mark.slow

CORRUPT = b"SQLite format 3\0" + os.urandom(8192)
"""A journal file with a valid header and nothing else that is one."""


@pytest.fixture(scope="module")
def relay(module_start: Callable[..., ApplianceProcess], module_broker: Broker,
          tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[tuple[ApplianceProcess, Peer, Path]]:
    """One device for the tests that only ask it, the peer that saw it start, its data.

    Its journal is corrupt before it starts, and askers' response topics must
    match ``replies/#``. Each test asks with its own ids and reads its own
    answers, so none sees what another did. The peer subscribed before the start:
    it holds the journal's error (not retained), which is out before any test asks.
    """
    data = tmp_path_factory.mktemp("relay-data")
    (data / "journal.sqlite3").write_bytes(CORRUPT)
    peer = Peer(module_broker.port, [f"{BASE}/#", "replies/#", "homeassistant/#"])
    try:
        app = module_start({"data_dir": data, "mqtt": {"ask_rate_per_min": 1000,
                                                       "response_topics": ["replies/#"]}})
        keep_notify_drained(app)  # it runs for several tests: its datagrams must not pile up
        peer.wait_for(lambda m: m.topic == f"{BASE}/error" and m.json()["topic"] == "journal")
        yield app, peer, data
    finally:
        peer.close()


@pytest.fixture
def asker(relay: tuple[ApplianceProcess, Peer, Path], module_broker: Broker) -> Iterator[Peer]:
    """A fresh peer of :func:`relay`'s device: it sees what is retained, and what is new."""
    p = Peer(module_broker.port, [f"{BASE}/#", "replies/#", "homeassistant/#"])
    yield p
    p.close()


def _errors(peer: Peer) -> list[dict[str, object]]:
    return [m.json() for m in peer.seen if m.topic == f"{BASE}/error"]


def _answer(peer: Peer, request_id: str, topic: str = f"{BASE}/answer",
            timeout: float = 60) -> Message:
    return peer.wait_for(lambda m: m.topic == topic and m.json().get("id") == request_id,
                         timeout)


def test_a_poisoned_burst_leaves_every_valid_ask_answered(asker: Peer) -> None:
    peer = asker
    poison = [(f"{BASE}/event/greenhouse", b'{"temperature": 1' + b"0" * 400 + b"}"),
              (f"{BASE}/ask", b'{"text": "\\ud800"}'),
              (f"{BASE}/ask", b'{"a":' * 600 + b"1" + b"}" * 600)]
    infos = [peer.client.publish(t, p, qos=1) for t, p in poison]
    infos += [peer.client.publish(f"{BASE}/ask", json.dumps(
        {"id": f"v{i}", "text": "Say hi.", "max_tokens": 4}), qos=1) for i in range(5)]
    for info in infos:
        info.wait_for_publish(10)
    for i in range(5):
        _answer(peer, f"v{i}")
    errors = _errors(peer)
    assert [e["topic"] for e in errors] == [t for t, _ in poison]
    assert "too large" in str(errors[0]["error"])
    assert "surrogate" in str(errors[1]["error"])
    assert "nested deeper" in str(errors[2]["error"])


def test_a_wildcard_response_topic_is_refused_and_a_poisoned_outbox_survives_restart(
        start: Callable[..., ApplianceProcess], peer: Peer, tmp_path: Path) -> None:
    app = start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "wild", "text": "hi"}),
                 response_topic="replies/#")
    error = peer.wait_for(lambda m: m.topic == f"{BASE}/error").json()
    assert error["id"] == "wild" and "wildcards" in error["error"]
    assert app.terminate() == 0
    # A row no policy lets in now, as an older version could have left in the outbox.
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    journal.answer(None, [Outgoing("replies/#", b"{}"), Outgoing("x/+/y", b"{}")])
    journal.close()
    app.start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "after", "text": "hi", "max_tokens": 4}))
    _answer(peer, "after")
    journal = Journal(tmp_path / "data" / "journal.sqlite3")
    # the bad rows dropped, not resent
    assert eventually(lambda: journal.outbox() == [], 20, "empty outbox")
    began = time.monotonic()
    assert app.terminate() == 0 and time.monotonic() - began < 15


def test_config_publish_topics_obey_the_topic_policy(
        tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The command line in this process: five fresh interpreters cost 2.5 CPU-s.
    monkeypatch.setenv("GOMP_SPINCOUNT", OPENMP_SPINCOUNT)  # main() sets it; put back after
    for topic in ("x/+/y", "site/#", "$SYS/x", "homeassistant/sensor/x/config",
                  "appliance/other/answer"):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"llm:\n  model_path: {model_path}\nrules:\n  - name: r\n"
                       f"    source: s\n    prompt: p\n    publish: '{topic}'\n")
        returncode = cli_main(["--config", str(cfg), "config", "check"])
        stderr = capsys.readouterr().err
        assert returncode == 2, topic
        assert stderr.startswith(f"appliance: {cfg}:7: rules[0].publish: ")
        assert len(stderr.strip().splitlines()) == 1


def test_no_open_relay(asker: Peer) -> None:
    peer = asker
    refused = ["homeassistant/device/evil/config", "$SYS/broker/x", "appliance/other/answer",
               f"{BASE}/status", f"{BASE}/state", "elsewhere/me"]
    for i, topic in enumerate(refused):
        peer.publish(f"{BASE}/ask", json.dumps({"id": f"r{i}", "text": "hi"}),
                     response_topic=topic)
    peer.publish(f"{BASE}/ask", json.dumps({"id": "fine", "text": "hi", "max_tokens": 4}),
                 response_topic="replies/me")
    _answer(peer, "fine", "replies/me")
    errors = {e["id"]: e["error"] for e in _errors(peer)}
    assert set(errors) == {f"r{i}" for i in range(len(refused))}
    assert "not in mqtt.response_topics" in str(errors["r5"])
    leaked = [m for m in peer.seen if m.topic.startswith(("homeassistant/device/evil",
                                                          "appliance/other"))]
    assert leaked == []


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """Mosquitto with passwords and an ACL: the appliance may not write ``forbidden/...``."""
    work = tmp_path_factory.mktemp("acl-broker")
    passwd = work / "passwd"
    for user, password in (("t1", "s3cret"), ("asker", "asker-secret")):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "t1" else []),
                        str(passwd), user, password], check=True)
    acl = work / "acl"
    acl.write_text("user t1\ntopic readwrite appliance/t1/#\ntopic write replies/#\n"
                   "topic read forbidden/#\n"
                   "user asker\ntopic write appliance/t1/ask\ntopic read appliance/t1/#\n"
                   "topic read replies/#\ntopic read forbidden/#\n")
    for path in (passwd, acl):
        os.chmod(path, 0o600)
    broker = LocalBroker(work, f"allow_anonymous false\npassword_file {passwd}\n"
                               f"acl_file {acl}\n")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, model_path: Path,
            acl_broker: LocalBroker) -> Iterator[ApplianceProcess]:
    """The device of :func:`acl_broker`, logged in as ``t1`` with its password in the environment.

    Its tests ask it with their own ids (the refusal) or only read it (the environment).
    """
    work = tmp_path_factory.mktemp("guarded")
    config = _config(work, model_path, acl_broker.port,
                     "  username: t1\n  password_env: APPLIANCE_TEST_PW\n"
                     "  discovery: {enabled: false}\n")
    app = ApplianceProcess(work, config, {"APPLIANCE_TEST_PW": "s3cret"})
    try:
        app.start()
        keep_notify_drained(app)
        yield app
    finally:
        app.close()


def test_a_broker_refusal_is_an_error_never_answered(
        guarded: ApplianceProcess, acl_broker: LocalBroker) -> None:
    app = guarded
    peer = Peer(acl_broker.port, [f"{BASE}/#", "replies/#", "forbidden/#"],
                auth=("asker", "asker-secret"))
    try:
        peer.publish(f"{BASE}/ask", json.dumps({"id": "deny", "text": "hi", "max_tokens": 4}),
                     response_topic="forbidden/x")
        error = peer.wait_for(lambda m: m.topic == f"{BASE}/error"
                              and m.json().get("id") == "deny").json()
        assert error["topic"] == "forbidden/x"
        assert "refused" in error["error"] and "0x87" in error["error"]
        peer.publish(f"{BASE}/ask", json.dumps({"id": "ok", "text": "hi", "max_tokens": 4}),
                     response_topic="replies/me")
        _answer(peer, "ok", "replies/me")
        assert not [m for m in peer.seen if m.topic.startswith("forbidden/")]
        log = (app.workdir / f"run-{app.runs}.log").read_text()
        assert '"publish_refused"' in log
        journal = Journal(app.workdir / "data" / "journal.sqlite3")
        assert eventually(lambda: journal.outbox() == [], 20,
                          "empty outbox")  # the refused one retired too
    finally:
        peer.close()


def _mount_tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]),
                           "tmpfs", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def test_disk_full_holds_the_question_until_there_is_room(
        start: Callable[..., ApplianceProcess], peer: Peer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _mount_tmpfs(data, "600k")
    try:
        start()
        filler = data / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        for i in range(4):
            peer.publish(f"{BASE}/ask", json.dumps({"id": f"full{i}", "text": "hi",
                                                    "max_tokens": 4}))
        for i in range(4):
            error = peer.wait_for(lambda m, i=i: m.topic == f"{BASE}/error"
                                  and m.json().get("id") == f"full{i}").json()
            assert "cannot store" in error["error"] and "full" in error["error"]
        degraded = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                                 and m.json()["state"] == "degraded").json()
        assert "journal" in degraded["problems"]
        filler.unlink()
        for i in range(4):
            _answer(peer, f"full{i}")
        peer.drain(3)
        answers = [m for m in peer.seen if m.topic == f"{BASE}/answer"]
        assert sorted(m.json()["id"] for m in answers) == [f"full{i}" for i in range(4)]
        assert peer.wait_for(lambda m: m.topic == f"{BASE}/state" and m is peer.seen[-1]
                             and m.json()["state"] == "idle")
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_read_only_data_dir_is_one_line(tmp_path: Path, model_path: Path,
                                          broker: Broker) -> None:
    config = _config(tmp_path, model_path, broker.port)
    _mount_tmpfs(tmp_path / "data", "1m", "ro")
    try:
        done = run_cli("--config", str(config), "run", timeout=60)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Read-only file system" in done.stderr
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "data")], check=False)


def test_a_corrupt_journal_is_moved_aside_and_reported(
        relay: tuple[ApplianceProcess, Peer, Path]) -> None:
    app, peer, data = relay  # started on a corrupt journal
    error = peer.wait_for(lambda m: m.topic == f"{BASE}/error"
                          and m.json()["topic"] == "journal").json()
    assert "moved to journal.sqlite3.corrupt-" in error["error"]
    assert list(data.glob("journal.sqlite3.corrupt-*"))
    peer.publish(f"{BASE}/ask", json.dumps({"id": "fresh", "text": "hi", "max_tokens": 4}))
    _answer(peer, "fresh")
    doctor = run_cli("--config", str(app.config), "doctor")
    assert "journal.sqlite3.corrupt-" in doctor.stdout


def test_a_retried_answer_streams_a_restart_marker(
        start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    app = start()
    peer.publish(f"{BASE}/ask", json.dumps({"id": "again", "text": STORY, "max_tokens": 60}))
    peer.wait_for(lambda m: m.topic == f"{BASE}/answer/stream"
                  and m.json()["seq"] >= 2)
    os.kill(app.worker_pid(), signal.SIGKILL)
    answer = _answer(peer, "again", timeout=90).json()
    chunks = [m.json() for m in peer.seen if m.topic == f"{BASE}/answer/stream"
              and m.json()["id"] == "again"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # seq never restarts
    restarts = [i for i, c in enumerate(chunks) if c.get("restart")]
    assert len(restarts) == 1 and restarts[0] >= 3
    after = "".join(c["delta"] for c in chunks[restarts[0]:])
    assert after.strip() == answer["text"]


def test_the_worker_does_not_inherit_the_mqtt_password(guarded: ApplianceProcess) -> None:
    app = guarded  # logged in with that password: it got to READY=1
    assert app.proc is not None
    mine = Path(f"/proc/{app.proc.pid}/environ").read_bytes().split(b"\0")
    worker = Path(f"/proc/{app.worker_pid()}/environ").read_bytes().split(b"\0")
    assert b"APPLIANCE_TEST_PW=s3cret" in mine
    assert not [v for v in worker if v.startswith(b"APPLIANCE_TEST_PW=")]


def test_a_lost_broker_is_logged_with_its_address(
        start: Callable[..., ApplianceProcess], peer: Peer, broker: Broker,
        tmp_path: Path) -> None:
    app = start()
    peer.wait_for(lambda m: m.topic == f"{BASE}/status" and m.payload == b"online")
    lost_at = len(peer.seen)
    broker.stop()
    log = tmp_path / f"run-{app.runs}.log"
    eventually(lambda: '"disconnected"' in log.read_text(), 30, "logged loss of the broker")
    broker.start()
    # Published anew by the reconnected device, not the retained one the peer gets back.
    peer.wait_for(lambda m: m.topic == f"{BASE}/status" and m.payload == b"online"
                  and not m.retain, 90, after=lost_at)
    lines = [json.loads(line) for line in
             (tmp_path / f"run-{app.runs}.log").read_text().splitlines()
             if line.startswith("{")]
    lost = [e for e in lines if e.get("event") == "disconnected"]
    assert lost and lost[0]["broker"] == f"127.0.0.1:{broker.port}" and lost[0]["reason"]

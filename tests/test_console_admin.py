"""The console's Manuals, Models, Health and Settings pages, over real parts.

A :class:`Console` is built from a real journal, status, action desk and
knowledge context (tests/console_rig.py); aiohttp's test client talks to the console's server
application as a logged-in browser would (a session is put on each request,
as the security middleware would). Uploads are indexed with the real embedding
model (slow); a pull downloads from a loopback server (tests/http_server.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from appliance import logs
from appliance.console.log_tail import QUEUE, LogTail
from appliance.console.settings_page import shown
from tests.console_rig import console_rig, next_events, run, serving
from tests.helpers import eventually_async
from tests.http_server import Served, serve

CONFIG = {"api": {"web": {"max_upload_mb": 20.0}},
          "knowledge": {"enabled": True},
          "models": {"allow_unsigned_site_catalog": True},
          "mqtt": {"username": "bob", "password_env": "ADMIN_TEST_PASSWORD"},
          "escalation": {"endpoint": "http://user:hunter22@big.lan:8080/v1"}}
MANUAL = b"""# Garden pump

## Priming the pump

Fill the pump housing with water before the first start, then open the bleed screw
until no air comes out. A dry pump overheats within a minute.

## Winter storage

Drain the pump and keep it indoors when frost is expected.
"""


async def upload(client: TestClient, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    response = await client.post("/manuals/upload", params={"name": name}, data=body,
                                 headers={"Content-Type": "application/octet-stream"})
    return response.status, await response.json()


async def listed(client: TestClient) -> list[str]:
    response = await client.get("/manuals/documents")
    assert response.status == 200
    return [d["name"] for d in (await response.json())["documents"]]


# --- Manuals ------------------------------------------------------------------------------


@pytest.mark.slow  # the embedding model indexes and searches (seconds)
def test_upload_search_remove_and_the_service_sees_it(tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)

    async def scenario() -> None:
        async with serving(device) as client:
            assert await device.knowledge.passages("how do I prime the pump") == []
            status, answer = await upload(client, "pump.md", MANUAL)
            assert status == 200, answer
            assert answer["notice"] == "pump.md: added, 2 passages"
            assert await listed(client) == ["pump.md"]
            page = await (await client.get("/manuals")).text()
            assert 'data-name="pump.md"' in page and "knowledge-off" not in page
            assert (device.data / "manuals" / "pump.md").read_bytes() == MANUAL
            progress = await (await client.get("/manuals/progress")).json()
            assert progress["stage"] == "done" and progress["total"] == 2

            found = await (await client.get("/manuals/search",
                                            params={"q": "the pump needs water first"})).json()
            best = found["passages"][0]
            assert (best["doc"], best["section"]) == ("pump.md", "Priming the pump")
            assert 0 < best["score"] <= 1.2 and "bleed screw" in best["text"]
            # The running appliance's context sees the new manual at its next question.
            seen = await device.knowledge.passages("how do I prime the pump")
            assert seen and seen[0].section == "Priming the pump"

            # A bad file: the CLI's line, and the list and the kept file as they were.
            status, answer = await upload(client, "pump.md", b"\x00\x01\x02binary" * 100)
            assert status == 400
            assert answer["error"] == "appliance: pump.md: binary data, not text"
            assert await listed(client) == ["pump.md"]
            assert (device.data / "manuals" / "pump.md").read_bytes() == MANUAL

            response = await client.post("/manuals/remove", json={"name": "pump.md"})
            assert response.status == 200
            assert (await response.json())["notice"] == "pump.md: removed (2 passages)"
            assert await listed(client) == []
            assert not (device.data / "manuals" / "pump.md").exists()
            assert await device.knowledge.passages("how do I prime the pump") == []
        assert device.audited() == [("manual_add", "pump.md: added, 2 passages"),
                                    ("manual_remove", "pump.md: removed (2 passages)")]

    run(scenario)


def test_a_refused_upload_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, {"api": {"web": {"max_upload_mb": 0.001}},
                                          "knowledge": {"enabled": False}}, as_admin=True)

    async def scenario() -> None:
        async with serving(device) as client:
            status, answer = await upload(client, "tool.exe", b"MZ\x90\x00")
            assert status == 400
            assert answer["error"].startswith("appliance: tool.exe: unknown format ('.exe'); "
                                              "known: .adoc .asc")
            status, answer = await upload(client, "big.md", b"# Big\n" + b"word " * 400)
            assert status == 413
            assert answer["error"] == ("appliance: big.md: 0.00201 MB is over "
                                       "api.web.max_upload_mb (0.001 MB)")
            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
                for _ in range(3):
                    yield b"word " * 100
            response = await client.post("/manuals/upload", params={"name": "big.md"},
                                         data=chunks())
            assert response.status == 413
            assert (await response.json())["error"] == (
                "appliance: big.md: more than 0.0015 MB is over api.web.max_upload_mb (0.001 MB)")
            # Exactly the line `appliance knowledge add bad.pdf` prints for it.
            status, answer = await upload(client, "bad.pdf", b"hello not a pdf")
            assert (status, answer["error"]) == (400, "appliance: bad.pdf: not a readable PDF "
                                                 "(PdfStreamError: Stream has ended unexpectedly)")
            status, answer = await upload(client, "../etc/x.md", b"# x")
            assert status == 400 and "not a plain file name" in answer["error"]
            status, answer = await upload(client, "empty.md", b"  \n")
            assert (status, answer["error"]) == (400, "appliance: empty.md: empty file")
            assert await listed(client) == []
            assert sorted(p.name for p in (device.data / "manuals").iterdir()) == [".incoming"]
            assert not list((device.data / "manuals" / ".incoming").iterdir())
            page = await (await client.get("/manuals")).text()
            assert "knowledge-off" in page and "knowledge: {enabled: true}" in page
            assert 'input type="file" id="manual" name="manual"' in page
            assert device.audited() == []

    run(scenario)


# --- Models -------------------------------------------------------------------------------

BODY = bytes(range(256)) * 1024  # 256 KiB
SHA = hashlib.sha256(BODY).hexdigest()


def _catalog(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": {
        "tiny": {"kind": "llm", "file": "tiny.gguf", "url": url, "sha256": SHA,
                 "size": len(BODY), "license": "test"},
        "nohash": {"kind": "llm", "file": "nohash.gguf", "url": url, "license": "test"}}}))
    monkeypatch.setenv("APPLIANCE_CATALOG", str(catalog))


def test_a_pull_runs_in_the_server_survives_the_page_and_can_be_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)
    served = Served(BODY, trickle_s=0.005)

    async def pull_state(client: TestClient) -> dict[str, Any]:
        return (await (await client.get("/models/pull")).json())["pull"]

    async def scenario() -> None:
        async with serving(device) as client:
            page = await (await client.get("/models")).text()
            assert 'data-model="tiny"' in page and 'data-pull="tiny"' in page
            assert 'data-model="nohash"' in page and 'data-pull="nohash"' not in page
            assert 'id="pull" aria-labelledby="pull-title" hidden' in page
            response = await client.post("/models/pull", json={"name": "tiny"})
            assert response.status == 200

            async def some_arrived() -> bool:
                return (await pull_state(client))["done"] > 0
            await eventually_async(some_arrived, 120, "bytes of the pull")
            # A second page load (the first page closed) shows the same pull, running.
            page = await (await client.get("/models")).text()
            assert 'id="pull" aria-labelledby="pull-title" hidden' not in page
            running = await pull_state(client)
            assert running["name"] == "tiny" and running["state"] == "running"
            assert running["total"] == len(BODY) and running["file"] == "tiny.gguf"
            refused = await client.post("/models/pull", json={"name": "tiny"})
            assert refused.status == 409
            assert "a pull of tiny is running" in (await refused.json())["error"]
            assert (await client.post("/models/pull/cancel", json={})).status == 200

            async def ended() -> bool:
                return (await pull_state(client))["state"] not in ("running", "cancelling")
            await eventually_async(ended, 120, "the pull's end")
            cancelled = await pull_state(client)
            assert cancelled["state"] == "cancelled", cancelled
            assert "pull again to resume" in cancelled["line"]
            part = device.data / "models" / "tiny.gguf.part"
            kept = part.stat().st_size
            assert 0 < kept < len(BODY)

            served.trickle_s = None
            assert (await client.post("/models/pull", json={"name": "tiny"})).status == 200
            await eventually_async(ended, 120, "the pull's end")
            done = await pull_state(client)
            assert done["state"] == "done", done
            assert done["line"].startswith("tiny: verified and installed at ")
            assert (device.data / "models" / "tiny.gguf").read_bytes() == BODY
            assert served.ranges[-1] == f"bytes={kept}-"  # it resumed
            page = await (await client.get("/models")).text()
            assert "verified" in page and 'data-pull="tiny"' not in page
        assert [a for a, _ in device.audited()] == ["model_pull", "model_pull_cancel",
                                                     "model_pull"]

    with serve(served) as url:
        _catalog(tmp_path, url, monkeypatch)
        run(scenario)


# --- Health -------------------------------------------------------------------------------


@pytest.fixture
def logging_to_memory() -> Iterator[io.StringIO]:
    """The real log pipeline at debug level, writing to memory; restored afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    logs.configure(level="debug", fmt="json", stream=stream)
    yield stream
    root.handlers[:] = before[1]
    root.setLevel(before[0])


def test_the_log_tail_redacts_secrets_and_filters_by_level(
        tmp_path: Path, logging_to_memory: io.StringIO) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)
    secret = "s3cret-pass-1234"
    logs.add_secret(secret)
    log = logs.get_logger("tailtest")

    def ours(line: dict[str, Any]) -> bool:
        """Whether ``line`` is one of the test's own.

        The process may log others: asyncio, on collecting a task that another test
        left behind, logs "Task exception was never retrieved" at error level.
        """
        return line["component"] == "tailtest"

    async def scenario() -> None:
        async with serving(device) as client:
            log.debug("quiet_detail", n=1)
            log.warning("broker_refused", error=f"bad password {secret}")
            response = await client.get("/health/log", params={"level": "warning"})
            assert response.headers["Content-Type"] == "text/event-stream"
            assert "Content-Encoding" not in response.headers
            (kept,) = await next_events(response, "log", 1, ours)
            assert kept["event"] == "broker_refused" and kept["level"] == "warning"
            assert kept["fields"]["error"] == "bad password [redacted]"
            log.info("not_shown_at_warning")
            log.error("live_failure", detail=secret)
            (live,) = await next_events(response, "log", 1, ours)
            assert (live["event"], live["fields"]["detail"]) == ("live_failure", "[redacted]")
            response.close()

            everything = await client.get("/health/log", params={"level": "debug"})
            names = [e["event"] for e in await next_events(everything, "log", 3, ours)]
            assert names[:2] == ["quiet_detail", "broker_refused"]
            everything.close()
            bad = await client.get("/health/log", params={"level": "loud"})
            assert bad.status == 400 and "level must be one of" in (await bad.json())["error"]
            assert secret not in logging_to_memory.getvalue()

    run(scenario, 30)


def test_a_slow_subscriber_is_dropped_not_buffered() -> None:
    tail = LogTail(size=10)

    async def scenario() -> None:
        with tail.subscribe(0) as subscriber:
            for n in range(QUEUE + 5):
                tail.receive({"event": f"e{n}", "level": "info"})
            await asyncio.sleep(0)  # the lines are handed over through the loop
            assert subscriber.overflowed and subscriber.queue.qsize() == QUEUE
        assert [line["event"] for line in tail.recent()][-1] == f"e{QUEUE + 4}"
        assert len(tail.recent()) == 10

    run(scenario, 10)


def test_the_health_page_runs_the_doctor_checks(tmp_path: Path) -> None:
    device = console_rig(tmp_path, CONFIG, as_admin=True)

    async def scenario() -> None:
        async with serving(device) as client:
            page = await (await client.get("/health")).text()
            assert 'src="static/health.js"' in page and '<option value="debug">' in page
            checks = (await (await client.get("/health/checks")).json())["checks"]
            assert checks[0] == {"name": "config", "status": "ok", "detail": "c.yaml"}
            assert {"broker", "journal"} <= {c["name"] for c in checks}

    run(scenario, 60)


# --- Settings -----------------------------------------------------------------------------


def test_the_settings_page_hides_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = "mqtt-pw-98765"
    monkeypatch.setenv("ADMIN_TEST_PASSWORD", password)
    logs.add_secret(password)
    device = console_rig(tmp_path, CONFIG, as_admin=True)

    async def scenario() -> None:
        async with serving(device) as client:
            page = await (await client.get("/settings")).text()
            assert 'data-section="mqtt"' in page and "username: bob" in page
            assert "password_env: ADMIN_TEST_PASSWORD" in page
            assert "hunter22" not in page and "user:[redacted]@big.lan" in page
            assert password not in page

    run(scenario, 30)
    assert shown({"mqtt": {"password": "x1", "password_file": "/etc/pw", "token": None},
                  "note": "pw is mqtt-pw-98765"}) == {
        "mqtt": {"password": "[redacted]", "password_file": "/etc/pw", "token": None},
        "note": "pw is [redacted]"}

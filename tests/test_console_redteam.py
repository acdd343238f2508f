"""The console attacked from outside: defects found by reading it as a hostile client would.

Fast: a console over real parts (tests/console_rig.py, its journal in tmp_path)
served by the real server's application (guard, doors, the security
middleware) through aiohttp's test client. Each test is one finding of the
red-team review; it failed on the code as it was.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from appliance.api.http_body import BODY_TIMEOUT_S
from appliance.config.schema_api import WebSettings
from appliance.console import auth as auth_module
from appliance.console import password as pw
from appliance.console.app import Console
from appliance.console.auth import Auth
from appliance.console.manuals import Manuals
from tests.console_rig import PASSWORD, PUBLIC_STATUS, console_rig, run_console, sign_in


@asynccontextmanager
async def _unlimited(client: TestClient) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without aiohttp's 100-connection cap (to play many browsers)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


# --- resource exhaustion ------------------------------------------------------------------


def test_anonymous_live_streams_cannot_take_every_connection(tmp_path: Path) -> None:
    """Live streams are capped below the server's connection pool.

    With ``public_status``, anyone on the network may open ``events``; each stream holds a
    connection busy for as long as it likes, and the server's pool answers 503 to every new
    connection once all are busy: the admin could no longer even log in.
    """

    async def scenario(client: TestClient, console: Console) -> None:
        pool = 128  # api.web's connection limit (HttpSettings().max_connections)
        opened: list[aiohttp.ClientResponse] = []
        refused: aiohttp.ClientResponse | None = None
        async with _unlimited(client) as session:
            try:
                while len(opened) < pool and refused is None:
                    response = await session.get(client.make_url("/events"))
                    if response.status == 200:
                        opened.append(response)
                    else:
                        refused = response
                assert refused is not None, f"{pool} anonymous streams, all served: the pool " \
                    "is full and every new client gets 503"
                assert refused.status == 503
                assert "live" in (await refused.json())["error"]
                assert len(console.overview.hub.clients) < pool // 2
            finally:
                for response in opened:
                    response.close()

    run_console(console_rig(tmp_path, PUBLIC_STATUS, password=PASSWORD), scenario)


def test_a_stalled_upload_leaves_no_partial_file_behind(tmp_path: Path) -> None:
    """An upload that stops sending is refused, and its staged file goes.

    It was left half written in ``manuals/.incoming``, its descriptor open, one per name
    (the disk fills with as many as a client cares to start).
    """

    async def scenario(client: TestClient, console: Console) -> None:
        csrf = await sign_in(client)
        manuals = next(v for v in console.views if isinstance(v, Manuals))
        release = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"# Pump\n\n" + b"Prime the pump first.\n" * 200
            await release.wait()  # then nothing more: the client stalls

        sending = asyncio.create_task(client.post(
            "/manuals/upload", params={"name": "stall.md"}, data=body(),
            headers={"X-CSRF-Token": csrf, "Content-Type": "application/octet-stream"}))
        try:
            while manuals.job is None or manuals.job.stage != "failed":
                await asyncio.sleep(0.02)  # bounded by the scenario's deadline
            assert "stalled" in manuals.job.line
            assert not manuals.busy
            incoming = manuals.store / ".incoming"
            left = sorted(p.name for p in incoming.iterdir()) if incoming.exists() else []
            assert left == [], f"a stalled upload left {left} in {incoming}"
        finally:
            release.set()
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)

    rig = console_rig(tmp_path, password=PASSWORD)
    rig.app[BODY_TIMEOUT_S] = 0.3
    run_console(rig, scenario)


def test_password_checks_run_one_at_a_time_whoever_asks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Password checks wait their turn, whoever asks.

    Each Argon2id check takes 64 MiB and four lanes for ~0.1 s. The throttle allows one
    attempt in flight per client, but every address on the network is a client: eight
    guessers made eight checks at once (half a GiB beside the model, every core busy).
    The turn lasts until the thread ends, even when the guesser hangs up (its handler is
    cancelled, the thread hashes on).
    """
    path = tmp_path / "data" / "console" / "password"
    pw.write_hash(path, pw.hash_password(PASSWORD))
    lock = threading.Lock()
    running = peak = 0

    def slow_matches(stored: str, given: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(auth_module.pw, "matches", slow_matches)

    async def main() -> None:
        auth = Auth(WebSettings(), tmp_path / "data")
        await auth.refresh(force=True)
        assert auth.has_password()
        async with asyncio.timeout(30):
            gone = asyncio.create_task(auth.verify("hung up"))
            while not running:
                await asyncio.sleep(0.005)
            gone.cancel()
            results = await asyncio.gather(*(auth.verify(f"guess {n}") for n in range(4)))
        assert results == [False] * 4
        assert gone.cancelled()

    asyncio.run(main())
    assert peak == 1, f"{peak} password checks ran at once"

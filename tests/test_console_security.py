"""The console's locks at the HTTP level: password, sessions, CSRF, throttle, loopback, headers.

Fast: a console over real parts (tests/console_rig.py, its journal in
tmp_path) served by the real server's application (guard, doors, the security
middleware) through aiohttp's test client, on loopback, or on this machine's
own non-loopback address to play a client of the network. One test checks that
the composition root (:func:`compose` with ``api.web``) serves it that way too.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from appliance.cli import main as cli_main
from appliance.config.schema_api import WebSettings
from appliance.console import password as pw
from appliance.console.app import Console
from appliance.console.auth import MAX_SESSIONS, Auth
from appliance.console.roles import Access
from appliance.console.security import SECURITY_HEADERS
from appliance.console.throttle import MAX_DELAY_S, LoginThrottle
from appliance.service.activity_log import ActivityQuery
from appliance.service.compose import compose
from appliance.service.status import Status
from tests.console_rig import (
    HTML,
    PASSWORD,
    PUBLIC_STATUS,
    console_rig,
    console_settings,
    form_token,
    log_in,
    network_address,
    run,
    run_console,
    session_token,
)
from tests.helpers import smollm2_path


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def _status(client: TestClient, method: str, path: str,
                  headers: dict[str, str] | None = None) -> tuple[int, str]:
    """The status and Location of one request (a stream is closed once its head arrives)."""
    async with asyncio.timeout(20), client.request(
            method, path, headers=headers, allow_redirects=False,
            json={} if method not in ("GET", "HEAD") else None) as response:
        return response.status, response.headers.get("Location", "")


# --- every route ------------------------------------------------------------------------


def test_every_route_without_a_session_is_refused_or_sent_to_login(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        assert {("GET", "/login"), ("POST", "/login"), ("POST", "/logout"), ("GET", "/setup"),
                ("POST", "/setup")} <= console.routes.keys()
        opened = {path for (_, path), route in console.routes.items()
                  if route.access is Access.OPEN}
        assert opened == {"/static/{name}", "/login", "/setup"}, "only these need no login"
        for (method, path), route in console.routes.items():
            method = "GET" if method == "*" else method
            url = _concrete(path)
            if route.access is Access.OPEN:
                status, where = await _status(client, method, url, HTML)
                assert (status != 401 and not where.endswith("/login")) or path == "/setup", \
                    f"{method} {path} is open but was refused: {status} {where}"
                continue
            if method == "GET":
                assert await _status(client, method, url, HTML) == (303, "/login"), \
                    f"the page {path} without a session"
                assert (await _status(client, method, url))[0] == 401, f"GET {path} (data)"
                assert (await _status(client, "HEAD", url))[0] == 401, f"HEAD {path}"
            else:
                assert (await _status(client, method, url))[0] == 401, f"{method} {path}"

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_with_public_status_the_view_pages_open_without_a_login(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        viewed = 0
        for (method, path), route in console.routes.items():
            url = _concrete(path)
            if route.access is Access.ADMIN:
                assert (await _status(client, "GET" if method == "*" else method, url))[0] \
                    == 401, f"{method} {path} is not public"
            elif route.access is Access.VIEW and method in ("GET", "*"):
                status, where = await _status(client, "GET", url, HTML)
                assert status != 401 and not where.endswith("/login"), f"GET {path}: {status}"
                viewed += 1
            elif route.access is Access.VIEW:  # a change is never anonymous
                assert (await _status(client, method, url))[0] in (401, 403), f"{method} {path}"
        assert viewed >= 1

    run_console(console_rig(tmp_path, PUBLIC_STATUS, password=PASSWORD), scenario)


# --- login, throttle, logout ------------------------------------------------------------


def test_a_wrong_password_is_refused_and_the_next_try_must_wait(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        console.auth.throttle.clock = lambda: 1000.0  # a slow machine: the delay stays on
        wrong = await log_in(client, "not the password")
        assert wrong.status == 401, await wrong.text()
        assert (await wrong.json())["error"] == "wrong password"
        assert "appliance_session" not in wrong.cookies
        for attempt in ("again wrong", PASSWORD):  # the right one is not even checked now
            waited = await log_in(client, attempt)
            assert waited.status == 429, await waited.text()
            assert 1 <= int(waited.headers["Retry-After"]) <= MAX_DELAY_S
            assert "try again in" in (await waited.json())["error"]
        titles = [e.title for e in console.parts.journal.activity(ActivityQuery(
            source="console"))]
        assert titles == ["login_failed"]

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_many_wrong_passwords_keep_one_row_a_minute_in_activity(tmp_path: Path) -> None:
    """Guessing must not push the device's real history out of Activity's bounded rows."""

    async def scenario(client: TestClient, console: Console) -> None:
        now = [1000.0]
        console.auth.throttle.clock = lambda: now[0]
        for _ in range(5):
            now[0] += 3600  # each guess after its delay
            assert (await log_in(client, "not the password")).status == 401
        rows = console.parts.journal.activity(ActivityQuery(source="console"))
        assert [e.title for e in rows] == ["login_failed"]

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_the_right_password_opens_a_session_and_logout_ends_it(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        ok = await log_in(client)
        assert ok.status == 200, await ok.text()
        assert await ok.json() == {"redirect": "./"}
        cookie = next(v for v in ok.headers.getall("Set-Cookie")
                      if v.startswith("appliance_session="))
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
        assert "httponly" in attributes and "secure" not in attributes  # plain HTTP here
        assert attributes["samesite"].strip() == "SameSite=Strict"
        assert attributes["path"].strip() == "Path=/"
        assert (await _status(client, "GET", "/", HTML))[0] == 200
        csrf = await session_token(client)
        out = await client.post("/logout", json={}, headers={"X-CSRF-Token": csrf})
        assert out.status == 200 and await out.json() == {"redirect": "login"}
        assert await _status(client, "GET", "/", HTML) == (303, "/login")
        assert not console.auth.sessions
        rows = console.parts.journal.activity(ActivityQuery(source="console"))
        assert [(e.title, e.fields["who"]) for e in rows] == [
            ("logout", "admin@127.0.0.1"), ("login", "admin@127.0.0.1")]

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_behind_a_tls_proxy_the_cookie_is_secure_and_pages_are_compressed(
        tmp_path: Path) -> None:
    async def scenario(client: TestClient, _console: Console) -> None:
        token = await form_token(client)
        ok = await client.post("/login", json={"password": PASSWORD}, headers={
            "X-CSRF-Token": token, "X-Forwarded-Proto": "https"})
        assert ok.status == 200, await ok.text()
        cookie = next(v for v in ok.headers.getall("Set-Cookie")
                      if v.startswith("appliance_session="))
        assert "secure" in {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        page = await client.get("/login", headers={**HTML, "Accept-Encoding": "gzip"})
        assert page.status == 200 and page.headers.get("Content-Encoding") == "gzip"

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_behind_an_ingress_the_cookie_and_redirects_keep_its_path(tmp_path: Path) -> None:
    ingress = {"X-Ingress-Path": "/api/hassio_ingress/tok3n"}

    async def scenario(client: TestClient, console: Console) -> None:
        assert await _status(client, "GET", "/talk", {**HTML, **ingress}) == (
            303, "/api/hassio_ingress/tok3n/login")
        token = await form_token(client)
        ok = await client.post("/login", json={"password": PASSWORD},
                               headers={"X-CSRF-Token": token, **ingress})
        assert ok.status == 200, await ok.text()
        cookie = next(v for v in ok.headers.getall("Set-Cookie")
                      if v.startswith("appliance_session="))
        assert "Path=/api/hassio_ingress/tok3n" in cookie

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


# --- CSRF, Origin -----------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        bare = await client.post("/login", json={"password": PASSWORD})
        assert bare.status == 403 and "token" in (await bare.json())["error"]
        token = await form_token(client)
        forged = await client.post("/login", json={"password": PASSWORD},
                                   headers={"X-CSRF-Token": token[::-1]})
        assert forged.status == 403
        assert (await log_in(client)).status == 200
        for headers in ({}, {"X-CSRF-Token": "x" * 43}):
            refused = await client.post("/logout", json={}, headers=headers)
            assert refused.status == 403, await refused.text()
        assert console.auth.sessions  # still logged in

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_posts_from_other_sites_are_refused(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        token = await form_token(client)
        for headers in ({"Origin": "http://evil.example"},
                        {"Sec-Fetch-Site": "cross-site"},
                        {"Host": "evil.example"}):
            refused = await client.post("/login", json={"password": PASSWORD},
                                        headers={"X-CSRF-Token": token, **headers})
            assert refused.status == 403, (headers, await refused.text())
        assert not console.auth.sessions

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


# --- no password yet: loopback only, and the first-run page -----------------------------


def test_without_a_password_a_network_client_is_refused(tmp_path: Path) -> None:
    address = network_address()

    async def scenario(client: TestClient, console: Console) -> None:
        for path in ("/", "/login", "/setup", "/static/console.js"):
            response = await client.get(path, headers=HTML, allow_redirects=False)
            assert response.status == 403, path
            assert "appliance console password" in (await response.json())["error"]

    run_console(console_rig(tmp_path), scenario, host=address)


def test_a_proxied_client_is_not_local(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Ingress-Path"):
            response = await client.get("/setup", headers={**HTML, header: "/a"},
                                        allow_redirects=False)
            assert response.status == 403, header

    run_console(console_rig(tmp_path), scenario)


def test_the_first_run_page_sets_the_password_from_loopback_once(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        assert await _status(client, "GET", "/", HTML) == (303, "/login")
        assert await _status(client, "GET", "/login", HTML) == (303, "/setup")
        token = await form_token(client, "setup")
        headers = {"X-CSRF-Token": token}
        short = await client.post("/setup", json={"password": "short", "confirm": "short"},
                                  headers=headers)
        assert short.status == 400 and "at least 8" in (await short.json())["error"]
        differ = await client.post("/setup", json={"password": PASSWORD, "confirm": "other"},
                                   headers=headers)
        assert differ.status == 400
        assert (await client.post("/login", json={"password": PASSWORD},
                                  headers=headers)).status == 403  # nothing to log in to
        ok = await client.post("/setup", json={"password": PASSWORD, "confirm": PASSWORD},
                               headers=headers)
        assert ok.status == 200, await ok.text()
        assert "appliance_session" in ok.cookies
        assert (await _status(client, "GET", "/talk", HTML))[0] == 200
        path = tmp_path / "data" / "console" / "password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert pw.matches(path.read_text().strip(), PASSWORD)
        assert await _status(client, "GET", "/setup", HTML) == (303, "/login")
        again = await client.post("/setup", json={"password": "another one", "confirm":
                                                  "another one"},
                                  headers={"X-CSRF-Token": await session_token(client)})
        assert again.status == 403, await again.text()
        assert pw.matches(path.read_text().strip(), PASSWORD)
        rows = console.parts.journal.activity(ActivityQuery(source="console"))
        assert [(e.title, e.text) for e in rows] == [("password_set", "first-run page")]

    run_console(console_rig(tmp_path), scenario)


def test_the_first_run_page_is_not_served_to_the_network(tmp_path: Path) -> None:
    address = network_address()

    async def scenario(client: TestClient, console: Console) -> None:
        assert await _status(client, "GET", "/setup", HTML) == (303, "/login")
        token = await form_token(client)
        refused = await client.post("/setup", json={"password": "x" * 9, "confirm": "x" * 9},
                                    headers={"X-CSRF-Token": token})
        assert refused.status == 403
        assert (await log_in(client)).status == 200  # a password is set: the network logs in

    run_console(console_rig(tmp_path, password=PASSWORD), scenario, host=address)


def test_a_corrupt_password_file_locks_the_network_out(tmp_path: Path) -> None:
    path = tmp_path / "data" / "console" / "password"
    path.parent.mkdir(parents=True)
    path.write_text("hunter2 in plain text\n")

    async def scenario(client: TestClient, console: Console) -> None:
        assert await _status(client, "GET", "/login", HTML) == (303, "/setup")
        assert not console.auth.has_password()
        assert (await _status(client, "GET", "/setup", {**HTML, "X-Real-IP": "10.0.0.9"}
                              ))[0] == 403

    run_console(console_rig(tmp_path), scenario)


# --- headers ----------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    async def scenario(client: TestClient, console: Console) -> None:
        page = await client.get("/login", headers=HTML)
        refused = await client.get("/talk")
        for response in (page, refused):
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (response.status, name)
            assert response.headers["Cache-Control"] == "no-store"
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        asset = await client.get("/static/console.js")
        assert asset.status == 200 and asset.headers["Cache-Control"] != "no-store"

    run_console(console_rig(tmp_path, password=PASSWORD), scenario)


def test_the_composition_root_serves_the_console_behind_its_locks(tmp_path: Path) -> None:
    """What the rig stands in for: :func:`compose` with ``api.web`` builds the same server."""
    zone = tmp_path / "temp"
    zone.write_text("40000\n")
    settings = console_settings(tmp_path, {"llm": {"model_path": smollm2_path()},  # never loaded
                                           "thermal": {"zone_path": zone}})

    async def scenario() -> None:
        service = await compose(settings, None, Status())
        try:
            assert service.apis is not None and service.apis.web is not None
            console = service.apis.console
            assert console is not None
            async with TestClient(TestServer(service.apis.web.app())) as client:
                assert await _status(client, "GET", "/talk", HTML) == (303, "/login")
                assert (await _status(client, "GET", "/talk"))[0] == 401
                page = await client.get("/login", headers=HTML)
                for name, value in SECURITY_HEADERS.items():
                    assert page.headers.get(name) == value, name
        finally:
            service.journal.close()

    run(scenario)


# --- the parts on their own -------------------------------------------------------------


def test_the_login_delay_grows_to_a_minute_and_memory_stays_bounded() -> None:
    now = [0.0]
    throttle = LoginThrottle(lambda: now[0], capacity=8)
    waits = []
    for _ in range(9):
        assert throttle.begin("10.0.0.1") == 0.0
        assert throttle.begin("10.0.0.1") > 0  # one attempt at a time
        throttle.end("10.0.0.1", ok=False)
        waits.append(throttle.begin("10.0.0.1"))
        now[0] += waits[-1]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert throttle.begin("2001:db8::1") == 0.0
    throttle.end("2001:db8::1", ok=False)
    assert throttle.begin("2001:db8::2") > 0  # the same /64
    for n in range(100):
        throttle.begin(f"10.1.0.{n}")
    assert len(throttle.records) <= 8


def test_sessions_expire_are_bounded_and_end_when_the_password_changes(tmp_path: Path) -> None:
    now = [0.0]
    auth = Auth(WebSettings(session_hours=1.0), tmp_path, clock=lambda: now[0])

    async def scenario() -> None:
        await auth.set_password(PASSWORD)
        assert await auth.verify(PASSWORD) and not await auth.verify("nope nope")
        first = auth.login("127.0.0.1")
        now[0] += 3000
        assert auth.session(first.id) is not None  # used: it slides
        now[0] += 3000
        assert auth.session(first.id) is not None
        now[0] += 3601
        assert auth.session(first.id) is None
        ids = [auth.login("127.0.0.1").id for _ in range(MAX_SESSIONS + 3)]
        assert len(auth.sessions) == MAX_SESSIONS and ids[0] not in auth.sessions
        pw.write_hash(auth.path, pw.hash_password("a new password"))  # the CLI, meanwhile
        await auth.refresh(force=True)
        assert not auth.sessions and await auth.verify("a new password")

    asyncio.run(scenario())


def test_the_cli_sets_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    target = tmp_path / "secret" / "console.pass"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "api": {"web": {
        "password_file": str(target)}}}))

    def cli(line: str) -> int:
        monkeypatch.setattr("sys.stdin", _Lines(line))
        return cli_main(["--config", str(config), "console", "password", "--stdin"])

    assert cli("short\n") == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert not target.exists()
    assert cli(PASSWORD + "\n") == 0
    assert capsys.readouterr().out == f"console password set: {target}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert pw.matches(target.read_text().strip(), PASSWORD)
    before = target.stat().st_mtime_ns
    assert cli(PASSWORD + "\n") == 0 and "unchanged" in capsys.readouterr().out
    assert target.stat().st_mtime_ns == before
    assert cli_main(["--config", str(tmp_path / "absent.yaml"), "console", "password"]) == 2
    assert os.listdir(target.parent) == ["console.pass"]  # no temporary file left


class _Lines:
    def __init__(self, text: str) -> None:
        self.text = text

    def readline(self, limit: int = -1) -> str:
        line, self.text = self.text, ""
        return line[:limit] if limit >= 0 else line

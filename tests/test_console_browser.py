"""The console in a real browser (issue 27), against a real ``appliance run``.

One device (real mosquitto, the SmolLM2 test model, knowledge on with the real
embedder, a publish action that asks for confirmation) and one headless
chromium (:mod:`tests.browser`) serve the whole module: starting them once
keeps the module to about half a minute. The tests run in file order and share
the browser's session: the login test ends logged in, the tests after it use
that session (the ``console`` fixture logs in when run alone), and
``test_logout_ends_the_session`` runs last of all. Every browser test ends by
asserting that the browser logged no error: a Content-Security-Policy
violation, a script error or an asset that failed to load would show there.

The pages' stable hooks (ids and ``data-*`` attributes) are the pages' owners';
they are named once, in :data:`SEL`, so a renamed hook is fixed in one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.bench.broker import LocalBroker, free_port
from appliance.console.assets import manifest, static_dir
from appliance.console.password import hash_password, password_path, write_hash
from appliance.console.render import NAV
from tests.browser import DESKTOP, PHONE, Browser, open_browser, require_chromium
from tests.conftest import BASE, service_config
from tests.helpers import STORY, keep_notify_drained
from tests.services import ApplianceProcess, Peer

PASSWORD = "green house 42"
OUTSIDE = re.compile(rb"https?://", re.IGNORECASE)
PUMP = "garden/pump/set"
SEL = {
    "password": "input[type=password]",
    "login": "form[action=login] [type=submit]",
    "logout": "form.logout button",
    "temp": '[data-field="temp_c"]',
    "throttle": '[data-field="throttle_level"]',
    "question": "#question",
    "send": "[data-send]",
    "stop": "[data-stop]",
    "answer": "[data-chat] li.answer",
    "manual": "#manual",
    "upload": "#upload-form [type=submit]",
    "manuals": "#manual-list li[data-name]",
    "query": "#q",
    "search": "#search-form [type=submit]",
    "results": "#search-results li",
    "notice": "[data-notice]",
}
MANUAL = """# Greenhouse blower

## Cleaning the intake filter

Switch the blower off at the wall. Unscrew the four wing nuts of the intake grille,
take out the blue foam filter and rinse it under lukewarm water until the water runs
clear. Let it dry for a day before you put it back.

## Noises at start-up

A short whistle when the blower starts is normal: the impeller is spinning up.
"""
GROWTH = """
const chat = document.querySelector('[data-chat]');
window.answerLengths = [];
new MutationObserver(() => {
  const text = chat.querySelector('li.answer:last-of-type .text');
  const size = text ? text.textContent.length : 0;
  if (size && window.answerLengths[window.answerLengths.length - 1] !== size) {
    window.answerLengths.push(size);
  }
}).observe(chat, {subtree: true, childList: true, characterData: true});
"""
ACTIONS = {
    "actions": [{"name": "pump", "description": "Run the watering pump",
                 "phrases": ["water the plants"], "confirm": True,
                 "publish": {"topic": PUMP, "payload": {"state": "ON"}}}],
    "actions_confirm_s": 120,
}


@dataclass
class Device:
    """The module's running appliance and what the tests reach it by."""

    url: str
    port: int
    zone: Path
    """The thermal zone file the service reads."""
    peer: Peer
    """Subscribed to the device's topics and the pump's."""

    def http(self) -> httpx.Client:
        """A plain HTTP client of the console (no session, no browser), from its own origin."""
        return httpx.Client(base_url=self.url, headers={"Origin": self.url}, timeout=30,
                            follow_redirects=False)

    def login(self, client: httpx.Client) -> str:
        """Log ``client`` in as the login page's script does; the session's CSRF token."""
        page = client.get("/login", headers={"Accept": "text/html"})
        token = re.search(r'data-token="([^"]+)"', page.text)
        assert token is not None, page.text
        answer = client.post("/login", json={"password": PASSWORD},
                             headers={"X-CSRF-Token": token.group(1)})
        assert answer.status_code == 200, answer.text
        home = client.get("/", headers={"Accept": "text/html"})
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text)
        assert csrf is not None, home.text
        return csrf.group(1)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Device]:
    """One ``appliance run`` with the console on a free loopback port, its password set."""
    require_chromium()
    home = tmp_path_factory.mktemp("console")
    broker = LocalBroker(home / "broker")
    broker.start()
    port = free_port()
    overrides = {"api": {"web": {"listen": f"127.0.0.1:{port}"}},
                 "knowledge": {"enabled": True, "cache_mb": 64},
                 "thermal": {"interval_s": 0.2},
                 "mqtt": {"ask_rate_per_min": 1000}, **ACTIONS}
    config = service_config(home, broker.port, overrides)
    write_hash(password_path(None, home / "data"), hash_password(PASSWORD))
    process = ApplianceProcess(home, config)
    peer = Peer(broker.port, [f"{BASE}/#", PUMP])
    try:
        process.start()
        keep_notify_drained(process)
        yield Device(f"http://127.0.0.1:{port}", port, home / "temp", peer)
    finally:
        peer.close()
        process.close()
        broker.stop()


@pytest.fixture(scope="module")
def browser(device: Device, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One headless chromium for the module."""
    b = open_browser(tmp_path_factory.mktemp("browser"))
    yield b
    b.close()


@pytest.fixture
def console(device: Device, browser: Browser) -> Browser:
    """The module's browser, logged in (by the login test, or here if it did not run)."""
    if "appliance_session" not in browser.cookies():
        browser.open(f"{device.url}/login")
        browser.until(lambda _d: _try_password(browser, PASSWORD) == "", "the console", 90)
    return browser


def pages() -> list[str]:
    """Every page of the menu, as relative paths (``""`` is the Overview)."""
    return [item.path for item in NAV]


# --- without a browser ----------------------------------------------------------------------

def test_no_template_or_static_file_references_an_outside_url() -> None:
    package = static_dir().parent
    files = [*sorted((package / "templates").iterdir()), *sorted(static_dir().iterdir())]
    assert files
    found = [f"{p.name}: {m.group(0)!r}" for p in files for m in OUTSIDE.finditer(p.read_bytes())]
    assert found == []


@pytest.mark.slow
def test_a_foreign_origin_or_host_is_refused(device: Device) -> None:
    with device.http() as client:
        assert client.get("/login").status_code == 200
        for headers in ({"Host": "evil.example"}, {"Host": f"rebind.example:{device.port}"},
                        {"Origin": "http://evil.example"}):
            refused = client.post("/login", json={"password": PASSWORD}, headers=headers)
            assert refused.status_code == 403, (headers, refused.text)
            assert "error" in refused.json()
            assert client.get("/", headers=headers).status_code == 403, headers


@pytest.mark.slow
def test_a_post_without_the_csrf_token_is_refused(device: Device) -> None:
    with device.http() as client:
        assert client.post("/login", json={"password": PASSWORD}).status_code == 403
        csrf = device.login(client)
        for path, body in (("/talk/ask", {"text": "hello"}), ("/logout", {})):
            for headers in ({}, {"X-CSRF-Token": "x" * 43}):
                refused = client.post(path, json=body, headers=headers)
                assert refused.status_code == 403, (path, refused.text)
                assert "token" in refused.json()["error"]
        assert client.get("/talk").status_code == 200  # the session lives on
        assert client.post("/logout", json={}, headers={"X-CSRF-Token": csrf}).is_success


@pytest.mark.slow
def test_no_page_or_asset_references_an_outside_url(device: Device) -> None:
    with device.http() as client:
        device.login(client)
        bodies = {f"/{path}": client.get(f"/{path}") for path in pages()}
        bodies |= {f"/static/{name}": client.get(f"/static/{name}") for name in manifest()}
    for path, response in bodies.items():
        assert response.status_code == 200, (path, response.status_code)
        assert not OUTSIDE.search(response.content), path
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp, path


# --- in the browser ------------------------------------------------------------------------

def _try_password(browser: Browser, password: str) -> str:
    """Submit the login form with ``password``; the page's notice, ``""`` if it opened."""
    browser.script("document.querySelector('[data-notice]').textContent = ''")
    browser.type_into(SEL["password"], password)
    browser.click(SEL["login"])
    answer = browser.until(lambda d: "-" if not d.current_url.endswith("/login")
                           else browser.text("[data-notice]"), "an answer to the login form")
    return "" if answer == "-" else answer


@pytest.mark.slow
def test_login_refuses_a_wrong_password_slows_down_and_opens_with_the_right_one(
        device: Device, browser: Browser) -> None:
    browser.open(f"{device.url}/")
    browser.until(lambda d: d.current_url.endswith("/login"), "a redirect to the login page")
    assert _try_password(browser, "not the password") == "wrong password"
    # Each wrong password makes the next wait longer (1 s, 2 s, 4 s...): trying again at
    # once is told to wait, in the page and with a 429 and its Retry-After.
    answers: list[str] = []
    browser.until(lambda _d: (answers.append(_try_password(browser, "still not it"))
                              or answers[-1].startswith("too many wrong passwords: try again")),
                  "a wait message in the page", 30)
    assert set(answers[:-1]) <= {"wrong password"}, answers
    with device.http() as client:
        page = client.get("/login")
        token = re.search(r'data-token="([^"]+)"', page.text)
        assert token is not None
        waits = client.post("/login", json={"password": "nope"},
                            headers={"X-CSRF-Token": token.group(1)})
    assert waits.status_code == 429 and int(waits.headers["Retry-After"]) >= 1, waits.text
    # The right password is heard once the wait is over, and opens the console.
    browser.until(lambda _d: _try_password(browser, PASSWORD) == "", "the console", 90)
    browser.element(SEL["logout"])
    assert browser.cookies()["appliance_session"]
    assert browser.errors(allow=[r" 401 ", r" 429 "]) == []


@pytest.mark.slow
def test_the_overview_shows_a_hotter_soc_within_3_s_without_a_reload(
        device: Device, console: Browser) -> None:
    browser = console
    browser.open(f"{device.url}/")
    browser.wait_text(SEL["temp"], lambda t: t == "51.0", "the zone's 51.0 °C")
    assert browser.text(SEL["throttle"]) == "normal"
    browser.script("window.sameDocument = true")
    device.zone.write_text("77500\n")  # the default levels: hot from 75 °C
    try:
        browser.wait_text(SEL["temp"], lambda t: t == "77.5", "77.5 °C in the page", 3)
        browser.wait_text(SEL["throttle"], lambda t: t == "hot", "throttle level hot", 3)
        assert browser.script("return window.sameDocument === true"), "the page was reloaded"
    finally:
        device.zone.write_text("51000\n")
    browser.wait_text(SEL["throttle"], lambda t: t == "normal", "throttle level normal again")
    assert browser.errors() == []


@pytest.mark.slow
def test_talk_streams_an_answer_stop_cancels_it_and_mqtt_is_answered_meanwhile(
        device: Device, console: Browser) -> None:
    browser = console
    browser.open(f"{device.url}/talk")
    browser.script(GROWTH)
    browser.type_into(SEL["question"], STORY)
    browser.click(SEL["send"])
    browser.until(lambda _d: len(browser.script("return window.answerLengths")) >= 3,
                  "an answer that grows over at least two updates", 60)
    lengths = browser.script("return window.answerLengths")
    assert lengths == sorted(lengths) and len(set(lengths)) >= 3, lengths
    seen = len(device.peer.seen)
    device.peer.publish(f"{BASE}/ask", json.dumps({"id": "beside-the-page", "text": STORY,
                                                   "max_tokens": 16}))
    browser.click(SEL["stop"])
    browser.wait_text(f"{SEL['answer']}:last-of-type .meta", lambda t: t == "Stopped.",
                      "the page's answer stopped", 30)
    stopped_at = browser.script("return window.answerLengths")[-1]
    answer = device.peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                                  and m.json().get("id") == "beside-the-page", 90,
                                  after=seen).json()
    assert answer["tokens"] > 0 and answer["text"], answer
    assert browser.script("return window.answerLengths")[-1] == stopped_at  # no more text
    assert browser.element(SEL["send"]).is_enabled()
    assert browser.errors() == []


@pytest.mark.slow
def test_manuals_upload_search_and_a_refused_binary(
        device: Device, console: Browser, tmp_path: Path) -> None:
    browser = console
    manual, binary = tmp_path / "blower.md", tmp_path / "firmware.bin"
    manual.write_text(MANUAL)
    binary.write_bytes(bytes(range(256)) * 64)
    browser.open(f"{device.url}/manuals")
    browser.element(SEL["manual"], visible=False).send_keys(str(manual))
    browser.click(SEL["upload"])
    browser.element(f'{SEL["manuals"]}[data-name="blower.md"]', timeout=120)
    assert browser.text(SEL["notice"]).startswith("blower.md: added")
    listed = [el.get_attribute("data-name") for el in browser.elements(SEL["manuals"])]

    browser.type_into(SEL["query"], "How do I clean the foam filter of the intake?")
    browser.click(SEL["search"])
    first = browser.wait_text(SEL["results"], lambda t: "blower.md" in t, "a search result", 30)
    assert "Cleaning the intake filter" in first and "score" in first, first

    browser.element(SEL["manual"], visible=False).send_keys(str(binary))
    browser.click(SEL["upload"])
    line = browser.wait_text(SEL["notice"], lambda t: "firmware.bin" in t, "a refusal", 60)
    assert "\n" not in line and browser.element(SEL["notice"]).get_attribute(
        "data-kind") == "error", line
    browser.open(f"{device.url}/manuals")
    assert [el.get_attribute("data-name") for el in browser.elements(SEL["manuals"])] == listed
    assert browser.errors(allow=[r" 4\d\d "]) == []


@pytest.mark.slow
def test_a_pending_confirmation_is_answered_yes_in_the_page_and_acts_once(
        device: Device, console: Browser) -> None:
    browser = console
    seen = len(device.peer.seen)
    device.peer.publish(f"{BASE}/ask", json.dumps({"id": "water1", "text": "water the plants"}))
    asked = device.peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                                 and m.json().get("id") == "water1", 60, after=seen).json()
    assert asked["verdict"] == "awaiting_confirmation", asked
    browser.open(f"{device.url}/activity")
    browser.click('[data-waiting="water1"] [data-confirm="yes"]')
    browser.wait_text(SEL["notice"], lambda t: t.startswith("pump: done"), "the action done")
    device.peer.wait_for(lambda m: m.topic == PUMP, 30, after=seen)
    device.peer.drain(2)  # anything more would come at once
    sent = [m for m in device.peer.seen[seen:] if m.topic == PUMP]
    assert [m.json() for m in sent] == [{"state": "ON"}]  # exactly once
    assert browser.elements('[data-waiting="water1"]') == []
    assert browser.errors() == []


@pytest.mark.slow
def test_every_page_at_360_and_1280_px(device: Device, console: Browser) -> None:
    browser = console
    problems = []
    for path in pages():
        browser.open(f"{device.url}/{path}")
        assert not browser.driver.current_url.endswith("/login"), path
        name = path or "overview"
        for width in (PHONE, DESKTOP):
            shot = browser.screenshot(name, width)
            assert shot.stat().st_size > 1000
            if wide := browser.too_wide():
                problems.append(f"{name} scrolls sideways at {width} px: {wide}")
        problems += [f"{name}: a control without a label: {c}" for c in browser.unlabelled()]
        problems += [f"{name}: {error}" for error in browser.errors()]
    browser.resize(DESKTOP)
    assert problems == []
    # And the check above can fail: an inline script is refused by the CSP, and said so.
    browser.script("const s = document.createElement('script'); s.textContent = '1';"
                   "document.head.append(s);")
    browser.until(lambda _d: any("Content Security Policy" in e for e in browser.errors()),
                  "the CSP's refusal of an inline script in the browser's log")


@pytest.mark.slow
def test_logout_ends_the_session(device: Device, console: Browser) -> None:
    browser = console
    browser.open(f"{device.url}/talk")
    browser.click(SEL["logout"])
    browser.until(lambda d: d.current_url.endswith("/login"), "the login page after logout")
    browser.open(f"{device.url}/talk")
    browser.until(lambda d: d.current_url.endswith("/login"), "the login page again")
    assert browser.errors(allow=[r" 401 "]) == []

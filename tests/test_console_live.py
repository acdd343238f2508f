"""The console's Overview and World: live state over SSE, chart history, cost, staleness.

Fast tests: the console's real server (its HttpApi app, with the security
middleware) in aiohttp's test server, over real parts (tests/console_rig.py:
Status, Journal, WorldState, a Dispatcher over a scripted generator: no broker,
no model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import make_mocked_request

from appliance.actions.world import WorldState
from appliance.api.metrics import Metrics
from appliance.bench.broker import free_port
from appliance.config import parse_settings
from appliance.config.schema import PowerSettings
from appliance.console.cost import WINDOW, CostMeter
from appliance.console.history import COARSE_STEP_S, FINE_STEP_S, POINTS, History
from appliance.console.live import QUEUE_EVENTS, Hub, event
from appliance.console.world import needs, rows
from appliance.llm.types import Completion
from appliance.protocol.answer import Answer, Energy
from appliance.protocol.messages import Request
from appliance.service.status import Status
from tests.console_rig import PUBLIC_STATUS, console_rig, next_event, run, serving
from tests.helpers import within, yaml_text
from tests.services import ApplianceProcess

PRICED = {"power": {"price_per_kwh": 0.36, "device_cost": 100.0, "device_life_years": 5,
                    "currency": "EUR"}}
ACTIONS = {"actions": [
    {"name": "open_vent", "publish": {"topic": "greenhouse/vent/set", "payload": "open"},
     "require": [{"when": "greenhouse.temperature > 25", "need": "a greenhouse temperature",
                  "fresh_s": 60}]},
    {"name": "water", "publish": {"topic": "greenhouse/water/set", "payload": "on"},
     "require": [{"when": "greenhouse.humidity < 40", "need": "the humidity", "fresh_s": 600},
                 {"when": "tank.level > 10", "need": "the tank level", "fresh_s": 300}]}]}


def answer(tokens: int = 40, tokens_per_s: float = 20.0, joules: float | None = 36.0,
           total_ms: float = 2000.0) -> Answer:
    done = Completion("a1", "hello", tokens, "stop", ttft_ms=150.0, tokens_per_s=tokens_per_s,
                      model="m", total_ms=total_ms)
    energy = Energy(joules, joules / (total_ms / 1000)) if joules is not None else None
    return Answer("a1", "mqtt", "hello", "stop", tokens=tokens, completion=done, energy=energy)


# --- history ----------------------------------------------------------------------------------
def test_history_rings_stay_bounded_and_the_day_ring_summarises_the_hour() -> None:
    now = [1000.0]
    history = History(clock=lambda: now[0])
    per_coarse = round(COARSE_STEP_S / FINE_STEP_S)
    days = []
    for i in range(POINTS * 3):
        now[0] += FINE_STEP_S
        if i % per_coarse == 0:
            history.answered(10.0)
            history.answered(20.0)
        history.queue(5 if i % per_coarse == 3 else 0)
        history.tick(temp_c=50.0 + i % 2, power_w=None, queue_depth=0)
        coarse = history.coarse_point()
        if coarse is not None:
            days.append(coarse)
    assert len(history.rings["hour"]) == POINTS  # fixed memory: 3 hours of ticks, one kept
    assert len(days) == POINTS * 3 // per_coarse
    assert history.rings["hour"][-1].t == now[0]
    first = days[0]
    assert first.temp_c == pytest.approx(50.5)  # the mean of the step's fine points
    assert first.tokens_per_s == pytest.approx(15.0)  # the one step with answers: their mean
    assert first.queue_depth == 5  # the deepest the queue was, not its mean
    assert first.power_w is None  # no meter: no line, not a zero
    rows_ = history.as_json("hour")["points"]
    assert len(rows_) == POINTS and len(rows_[0]) == 5


# --- cost -------------------------------------------------------------------------------------
def test_cost_of_1000_answers_from_energy_and_the_device_s_life() -> None:
    meter = CostMeter(PowerSettings(price_per_kwh=0.36, device_cost=100.0,
                                    device_life_years=5.0, currency="EUR"))
    meter.observe(answer(joules=36.0, total_ms=2000.0))
    meter.observe(answer(joules=72.0, total_ms=4000.0))
    meter.observe(Answer("x", "mqtt", "Done.", "stop"))  # no generation: not counted
    cost = meter.cost()
    energy = (36 + 72) / 2 / 3.6e6 * 0.36 * 1000  # mean joules in kWh, at 0.36 a kWh
    device = 100.0 / (5 * 365.25 * 86400) * 3.0 * 1000  # mean of 2 s and 4 s of the device
    assert cost.answers == 2 and cost.currency == "EUR"
    assert cost.energy_per_1000 == pytest.approx(energy)
    assert cost.device_per_1000 == pytest.approx(device)
    assert cost.per_1000 == pytest.approx(energy + device)
    for _ in range(WINDOW):  # a running mean: the old answers leave the window
        meter.observe(answer(joules=3.6, total_ms=1000.0))
    assert meter.cost().energy_per_1000 == pytest.approx(3.6 / 3.6e6 * 0.36 * 1000)


def test_cost_without_a_meter_counts_only_the_device_and_without_prices_nothing() -> None:
    meter = CostMeter(PowerSettings(price_per_kwh=0.36, device_cost=100.0))
    meter.observe(answer(joules=None, total_ms=1000.0))
    cost = meter.cost()
    assert cost.energy_per_1000 is None and cost.per_1000 == cost.device_per_1000 is not None
    assert CostMeter(PowerSettings()).cost().per_1000 is None


def test_metrics_export_the_cost_of_1000_answers_with_its_currency() -> None:
    status = Status()
    settings = parse_settings(yaml_text(PRICED))
    metrics = Metrics(status, settings.thermal.levels, settings.power)
    assert b"appliance_cost_per_1000_answers" not in metrics.render()  # no answer yet
    metrics.observe(Request(id="a1", source="mqtt", text="hi"), answer())
    text = metrics.render().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("appliance_cost_per_1000_answers")]
    assert 'currency="EUR"' in line
    expected = metrics.cost.cost().per_1000 if metrics.cost is not None else None
    assert expected is not None and float(line.split()[-1]) == pytest.approx(expected)
    unpriced = Metrics(status, settings.thermal.levels)  # the call as it was: no cost
    unpriced.observe(Request(id="a1", source="mqtt", text="hi"), answer())
    assert b"appliance_cost_per_1000_answers" not in unpriced.render()


# --- the SSE stream ---------------------------------------------------------------------------
def test_events_stream_a_state_change_at_once_uncompressed(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = console_rig(tmp_path, PUBLIC_STATUS, PRICED)
        async with serving(rig) as client:
            rig.status.update(temp_c=55.0, throttle_level="normal")
            response = await client.get("events", headers={"Accept-Encoding": "gzip"})
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert "Content-Encoding" not in response.headers
            first = await within(next_event(response, "state"), 10, "the first state")
            assert first["temp_c"] == 55.0 and first["broker"] == "not connected"
            rig.status.update(temp_c=82.5, throttle_level="critical")
            hot = await within(next_event(response, "state", lambda d: d["temp_c"] == 82.5),
                               10, "the hotter state")
            assert hot["throttle_level"] == "critical" and hot["level_kind"] == "bad"
            # an answer: its figures and the cost, in the next state
            for listener in list(rig.dispatcher.answer_listeners):  # metrics', the console's
                listener(Request(id="a1", source="mqtt", text="hi"), answer())
            after = await within(next_event(response, "state", lambda d: d["last"] is not None),
                                 10, "the state after an answer")
            assert after["last"]["tokens_per_s"] == 20.0 and after["last"]["joules"] == 36.0
            assert after["cost"]["currency"] == "EUR" and after["cost"]["per_1000"] > 0
            response.close()

    run(scenario)


def test_a_burst_of_changes_is_one_state_event_with_the_latest_values(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = console_rig(tmp_path, PUBLIC_STATUS)
        async with serving(rig) as client:
            response = await client.get("events")
            await within(next_event(response, "state"), 10, "the first state")
            for t in range(40, 80):  # one loop turn: every change before the event is sent
                rig.status.update(temp_c=float(t), queue_depth=t % 3)
            state = await within(next_event(response, "state"), 10, "the next state")
            assert state["temp_c"] == 79.0  # the latest, not 40.0: the burst was coalesced
            response.close()

    run(scenario)


def test_problems_come_with_what_to_do(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = console_rig(tmp_path, PUBLIC_STATUS)
        async with serving(rig) as client:
            response = await client.get("events")
            rig.status.problem("journal", "disk full")
            state = await within(next_event(response, "state", lambda d: d["advice"]), 10,
                                 "a state with the problem")
            (item,) = state["advice"]
            assert item["part"] == "journal" and item["problem"] == "disk full"
            assert "free space" in item["advice"]
            response.close()

    run(scenario)


def test_a_client_that_does_not_read_is_dropped_and_its_queue_stays_bounded() -> None:
    async def scenario() -> None:
        hub = Hub()
        slow = hub.subscribe(make_mocked_request("GET", "/events"))
        quick = hub.subscribe(make_mocked_request("GET", "/events"))
        for i in range(QUEUE_EVENTS * 4):
            hub.publish(event("sample", {"i": i}))
            while not quick.queue.empty():  # this one keeps up
                quick.queue.get_nowait()
            assert slow.queue.qsize() <= QUEUE_EVENTS
        assert slow.dropped and slow not in hub.clients and hub.dropped == 1
        assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is None  # told to end
        slow.request.transport.abort.assert_called_once()  # a blocked write ends too
        assert quick in hub.clients and not quick.dropped

    run(scenario)


def test_a_closed_console_ends_its_streams(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = console_rig(tmp_path, PUBLIC_STATUS)
        async with serving(rig) as client:
            response = await client.get("events")
            await within(next_event(response, "state"), 10, "the first state")
            await rig.console.overview.close()
            rest = await within(response.content.read(), 10, "the end of the stream")
            assert rest.strip() == b"" and response.content.at_eof()
            assert not rig.console.overview.hub.clients

    run(scenario)


# --- pages ------------------------------------------------------------------------------------
def test_overview_first_paint_has_the_current_values_and_history_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = console_rig(tmp_path, PUBLIC_STATUS, PRICED)
        async with serving(rig) as client:
            rig.status.update(temp_c=71.25, throttle_level="warm", n_threads=3)
            page = await (await client.get("/")).text()
            assert 'data-field="temp_c" data-digits="1">71.2<' in page or \
                'data-field="temp_c" data-digits="1">71.3<' in page
            assert '<strong class="warn" data-field="throttle_level"' in page
            assert ">warm</strong>" in page
            assert "http://" not in page and "https://" not in page
            assert 'src="static/overview.js"' in page and 'src="static/charts.js"' in page
            hour = await (await client.get("history?span=hour")).json()
            assert hour["series"] == ["temp_c", "tokens_per_s", "power_w", "queue_depth"]
            assert hour["step_s"] == FINE_STEP_S and hour["points"] == []
            bad = await client.get("history?span=week")
            assert bad.status == 400 and "span must be hour or day" in await bad.text()
            for name in ("overview.js", "charts.js", "overview.css", "world.js"):
                asset = await client.get(f"static/{name}")
                assert asset.status == 200, name
                assert b"http://" not in await asset.read()

    run(scenario)


def test_world_marks_a_reading_older_than_an_action_needs_as_stale(tmp_path: Path) -> None:
    now = [100.0]
    settings = parse_settings(yaml_text(ACTIONS))
    need = needs(settings.actions)
    assert need["greenhouse"].fresh_s == 60  # the strictest of the actions that read it
    assert need["greenhouse"].actions == ("open_vent", "water")
    world = WorldState(clock=lambda: now[0], boot_id=lambda: "b1")
    world.update("greenhouse", {"temperature": 30, "humidity": 35})
    world.update("porch", {"light": 3})
    now[0] += 90  # older than open_vent's 60 s, younger than water's 600 s
    world.update("tank", {"level": 50})
    by_name = {row.name: row for row in rows(world, need)}
    assert by_name["greenhouse"].state == "stale" and by_name["greenhouse"].age_s == 90
    assert by_name["tank"].state == "fresh"
    assert by_name["porch"].state == ""  # no action needs it: never stale
    assert "open_vent" in by_name["greenhouse"].need and "1 min" in by_name["greenhouse"].need

    async def scenario() -> None:
        rig = console_rig(tmp_path, PUBLIC_STATUS, ACTIONS, clock=lambda: now[0])
        async with serving(rig) as client:
            rig.world.update("greenhouse", {"temperature": 30})
            now[0] += 61
            page = await (await client.get("world")).text()
            assert '<tr data-sensor="greenhouse" data-state="stale">' in page
            assert '<tr data-sensor="tank" data-state="missing">' in page  # needed, never read
            body = await (await client.get("world/readings")).json()
            states = {row["name"]: row["state"] for row in body["rows"]}
            assert states == {"greenhouse": "stale", "tank": "missing"}

    run(scenario)


# --- end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_hotter_zone_reaches_an_open_console_without_a_reload(
        tmp_path: Path, start: Callable[..., ApplianceProcess]) -> None:
    """What the browser test checks, at the HTTP level: the watchdog's reading is streamed."""
    port = free_port()
    start({"api": {"web": {"listen": f"127.0.0.1:{port}", "public_status": True}}})
    url = f"http://127.0.0.1:{port}"
    page = httpx.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and 'data-field="temp_c" data-digits="1">51.0<' in page.text
    with httpx.stream("GET", f"{url}/events", timeout=10) as stream:
        states = (json.loads(line[6:]) for line in stream.iter_lines()
                  if line.startswith("data: {\"state\""))
        assert next(states)["temp_c"] == 51.0
        (tmp_path / "temp").write_text("82000\n")  # the zone of the start fixture
        deadline = time.monotonic() + 30  # the watchdog reads every second
        for state in states:  # a state comes at least every 5 s (and each read times out)
            if state["temp_c"] == 82.0:
                break
            assert time.monotonic() < deadline, "no state at 82 °C within 30 s"
        assert state["throttle_level"] == "critical" and state["level_kind"] == "bad"

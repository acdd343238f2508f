"""The Overview page: what the appliance is doing, live, with charts of the last hour and day.

The page is rendered with the current values (it is useful before any script
runs), then ``static/overview.js`` follows ``GET /events`` (:mod:`appliance.console.live`):

* ``state`` events: :meth:`Overview.state`, the published state
  (:meth:`Status.as_dict <appliance.service.status.Status.as_dict>`) plus the
  broker connection, the uptime in words, the last answer's figures, the cost
  of 1,000 answers and each problem with what to do. Sent when something
  changes, at most every :data:`MIN_INTERVAL_S` (a burst of changes is one
  event), and every :data:`~appliance.console.history.FINE_STEP_S` for the
  uptime. Rendered only while a console is open, once for all of them.
* ``sample`` events: each new chart point (:mod:`appliance.console.history`).

``GET /history?span=hour|day`` gives a chart's points when the page opens.
Nothing here reads the hardware: the status, the power monitor, the bridge and
each answer already hold every figure shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from appliance.api.errors import ApiError, Problem
from appliance.console.advice import advise
from appliance.console.app import View
from appliance.console.history import FINE_STEP_S, History, Span
from appliance.console.live import Hub, event
from appliance.console.roles import Access
from appliance.logs import get_logger
from appliance.protocol.answer import Answer
from appliance.protocol.messages import Request

if TYPE_CHECKING:
    from appliance.console.app import Console

log = get_logger("console")

MIN_INTERVAL_S = 0.5
"""At most two ``state`` events a second."""


def duration_words(seconds: float) -> str:
    """``3 d 4 h``, ``2 h 5 min``, ``4 min 3 s``: the two largest units."""
    left = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size} {unit}")
            left %= size
    return " ".join(parts[:2])


class Overview(View):
    """The Overview page, the live events and the charts' history."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.parts = console.parts
        self.status = console.parts.status
        self.dispatcher = console.gate.dispatcher
        self.levels = [level.name for level in self.parts.settings.thermal.levels]
        self.history = History()
        self.hub = Hub(initial=lambda: [self._state_event()])
        self.last: dict[str, Any] | None = None
        self._rendered: bytes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sent = float("-inf")
        self._sampler: asyncio.Task[None] | None = None

    def add_routes(self, console: Console) -> None:
        """The page, its events and its charts' points."""
        console.add("GET", "/", self.page, Access.VIEW)
        console.add("GET", "/events", self.hub.stream, Access.VIEW)
        console.add("GET", "/history", self.history_json, Access.VIEW)

    # --- what the page shows ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The ``state`` event: the published state and what the Overview adds to it."""
        state = self.status.as_dict()
        power = self.dispatcher.power
        if power is not None and power.metered:
            watts = power.power_w  # the monitor's newest reading, already in memory
            state["power_w"] = None if watts is None else round(watts, 2)
        index = self.levels.index(state["throttle_level"]) \
            if state["throttle_level"] in self.levels else len(self.levels)
        cost = self.console.metrics.cost
        gpio = self.parts.settings.gpio
        state.update(
            broker="connected" if self.parts.desk.bridge.connected.is_set() else "not connected",
            uptime=duration_words(state["uptime_s"]),
            level_kind="good" if index == 0 else "warn" if index == 1 else "bad",
            fan=(f"{'running' if state['fan_on'] else 'off'} (GPIO {gpio.fan}: on from "
                 f"{gpio.fan_on_c:g} °C, off below {gpio.fan_off_c:g} °C)")
            if state["fan_on"] is not None else "none",
            last=self.last,
            cost=cost.cost().as_json() if cost is not None else None,
            advice=[item.as_json() for item in advise(self.status.problems)])
        return state

    async def page(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: the page with the current values."""
        return self.console.pages.render(request, "overview.html", "Overview",
                                         {"s": self.state()})

    async def history_json(self, request: web.Request) -> web.StreamResponse:
        """``GET /history?span=hour|day``: one chart ring."""
        span = request.query.get("span", "hour")
        if span not in ("hour", "day"):
            raise ApiError(Problem.BAD_REQUEST, "span must be hour or day")
        return web.json_response(self.history.as_json(cast(Span, span)))

    # --- feeding it ---------------------------------------------------------------------------
    def start(self) -> None:
        """Listen to the status and to answers; sample the charts every step."""
        self._loop = asyncio.get_running_loop()
        self.status.listeners.append(self._changed)
        self.dispatcher.answer_listeners.append(self._answered)
        self._sampler = self._loop.create_task(self._sample(), name="console samples")

    async def close(self) -> None:
        """Stop listening and end every stream."""
        with contextlib.suppress(ValueError):
            self.status.listeners.remove(self._changed)
        with contextlib.suppress(ValueError):
            self.dispatcher.answer_listeners.remove(self._answered)
        if self._timer is not None:
            self._timer.cancel()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self.hub.close()

    def _answered(self, _request: Request, answer: Answer) -> None:
        """A dispatcher answer listener: the last answer's figures, and the speed chart."""
        done = answer.completion
        if done is None or answer.tokens <= 0:
            return
        if answer.tokens > 1:
            self.history.answered(done.tokens_per_s)
        energy = answer.energy
        self.last = {"ttft_ms": round(done.ttft_ms, 1), "tokens_per_s": round(done.tokens_per_s, 2),
                     "tokens": answer.tokens, "source": answer.source, "at": round(time.time()),
                     "joules": round(energy.joules, 2) if energy is not None else None}
        self._changed()

    def _changed(self) -> None:
        """Something changed (a status listener): send the state soon, at most twice a second."""
        self._rendered = None
        self.history.queue(self.status.queue_depth)
        loop = self._loop
        if loop is None or self._timer is not None or not self.hub.listening:
            return
        delay = max(0.0, self._sent + MIN_INTERVAL_S - loop.time())
        self._timer = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        assert self._loop is not None
        self._sent = self._loop.time()
        if self.hub.listening:
            self.hub.publish(self._state_event())

    def _state_event(self) -> bytes:
        """The rendered ``state`` event, rendered again only after a change."""
        if self._rendered is None:
            self._rendered = event("state", self.state())
        return self._rendered

    async def _sample(self) -> None:
        """Every step: a chart point from the figures in memory, and the state (uptime moves)."""
        while True:
            await asyncio.sleep(FINE_STEP_S)
            try:
                self._tick()
            except Exception:  # a bug here must not end the charts for good
                log.exception("console_sample_failed")

    def _tick(self) -> None:
        power = self.dispatcher.power
        point = self.history.tick(temp_c=self.status.temp_c,
                                  power_w=power.power_w if power is not None else None,
                                  queue_depth=self.status.queue_depth)
        coarse = self.history.coarse_point()
        if self.hub.listening:
            self.hub.publish(event("sample", {"span": "hour", "point": point.row()}))
            if coarse is not None:
                self.hub.publish(event("sample", {"span": "day", "point": coarse.row()}))
        self._changed()

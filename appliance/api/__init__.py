"""The standard APIs: a Wyoming server and Ollama/OpenAI-compatible HTTP routes.

Home Assistant reaches the appliance through them (its Wyoming integration
for speech and conversation, its Ollama integration for the conversation
agent), and Open WebUI and other clients through OpenAI's chat completions.
Every request passes one :class:`~appliance.api.gate.ApiGate` into the same
dispatcher as MQTT and voice: priority, the thermal budget, rate limits and
cancel apply to all. ``GET /metrics`` serves Prometheus metrics of every answer.

The supervisor builds :class:`Apis` when ``api.http`` or ``api.wyoming`` is
set, awaits :meth:`Apis.start` before MQTT connects, and :meth:`Apis.close`
first at shutdown. Everything runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

from appliance.api.context import Context
from appliance.api.gate import ApiGate
from appliance.api.http_server import HttpApi
from appliance.api.metrics import Metrics
from appliance.api.model_card import model_card
from appliance.api.wyoming_server import WyomingServer
from appliance.api.zeroconf_ad import Advertisement
from appliance.config import Settings
from appliance.service.dispatcher import Dispatcher
from appliance.service.ratelimit import RateLimiter
from appliance.service.status import Status

__all__ = ["Apis"]


class Apis:
    """The configured API servers; bad listen addresses or token files fail here, at once."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher, status: Status) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.metrics = Metrics(status, settings.thermal.levels)
        # One limiter for both APIs: a client cannot double its rate by using both.
        self.gate = ApiGate(dispatcher, RateLimiter(settings.mqtt.ask_rate_per_min))
        card = model_card(settings)
        api = settings.api
        self.http = HttpApi(settings, api.http, Context(self.gate, card, settings, status),
                            self.metrics) if api.http is not None else None
        self.wyoming = WyomingServer(settings, api.wyoming, self.gate, card.name) \
            if api.wyoming is not None else None
        self.advertisement: Advertisement | None = None
        self._advertising: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (and announce the Wyoming server over zeroconf, in the background)."""
        self.dispatcher.answer_listeners.append(self.metrics.observe)
        try:
            if self.http is not None:
                await self.http.start()
            if self.wyoming is not None:
                await self.wyoming.start()
                self._advertise(self.wyoming)
        except BaseException:
            await self.close()
            raise

    def _advertise(self, server: WyomingServer) -> None:
        tcp = server.tcp
        if not server.wyoming.zeroconf or tcp is None:
            return
        name = server.wyoming.name or self.settings.device_id or "appliance"
        self.advertisement = Advertisement(name, *tcp)
        self._advertising = asyncio.create_task(self.advertisement.run(),
                                                name="zeroconf registration")

    async def close(self) -> None:
        """Stop announcing and listening; running API generations are cancelled."""
        with contextlib.suppress(ValueError):
            self.dispatcher.answer_listeners.remove(self.metrics.observe)
        if self._advertising is not None:
            self._advertising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._advertising
        if self.advertisement is not None:
            await self.advertisement.close()
        if self.wyoming is not None:
            await self.wyoming.close()
        if self.http is not None:
            await self.http.close()

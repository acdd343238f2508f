"""The standard APIs: a Wyoming server and Ollama/OpenAI-compatible HTTP routes.

Home Assistant reaches the appliance through them (its Wyoming integration
for speech and conversation, its Ollama integration for the conversation
agent), and Open WebUI and other clients through OpenAI's chat completions.
Every request passes one :class:`~appliance.api.gate.ApiGate` into the same
dispatcher as MQTT and voice: priority, the thermal budget, rate limits and
cancel apply to all. ``GET /metrics`` serves Prometheus metrics of every answer.
The console (``api.web``, :mod:`appliance.console`) is a second HTTP server of
the same kind, on its own port, with the device's pages.

The composition root builds :class:`Apis` when ``api.http``, ``api.wyoming``
or ``api.web`` is set, awaits :meth:`Apis.start` before MQTT connects, and :meth:`Apis.close`
first at shutdown. Everything runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING

from aiohttp import web

from appliance.api import ollama_routes, openai_routes
from appliance.api.context import Context
from appliance.api.gate import ApiGate
from appliance.api.http_server import HttpApi
from appliance.api.metrics import CONTENT_TYPE, Metrics
from appliance.api.model_card import model_card
from appliance.config import Settings
from appliance.config.schema_api import HttpSettings
from appliance.config.secrets import read_api_token
from appliance.service.dispatcher import Dispatcher
from appliance.service.ratelimit import RateLimiter
from appliance.service.status import Status

if TYPE_CHECKING:
    from appliance.api.wyoming_server import WyomingServer
    from appliance.api.zeroconf_ad import Advertisement
    from appliance.console.parts import ConsoleParts

__all__ = ["Apis"]


class Apis:
    """The configured API servers; bad listen addresses or token files fail here, at once."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher, status: Status,
                 console: ConsoleParts | None = None) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.metrics = Metrics(status, settings.thermal.levels, settings.power)
        # One limiter for every door: a client cannot double its rate by using several.
        self.gate = ApiGate(dispatcher, RateLimiter(settings.mqtt.ask_rate_per_min))
        card = model_card(settings)
        api = settings.api
        self.http = None
        if api.http is not None:
            context = Context(self.gate, card, settings, status)
            self.http = HttpApi(settings, api.http, self.metrics,
                                functools.partial(_api_routes, context, self.metrics),
                                token=read_api_token(settings))
        self.console = self.web = None
        if api.web is not None and console is not None:
            from appliance.console.app import Console  # jinja2 and argon2 load only when asked for

            self.console = Console(console, self.gate, self.metrics)
            self.web = HttpApi(settings, HttpSettings(listen=api.web.listen,
                                                      allowed_hosts=api.web.allowed_hosts),
                               self.metrics, self.console.add_routes, key="api.web",
                               middlewares=self.console.middlewares(),
                               on_prepare=[self.console.on_prepare], json_only=False)
        self.wyoming: WyomingServer | None = None
        if api.wyoming is not None:
            from appliance.api.wyoming_server import WyomingServer  # vosk loads only when asked for

            self.wyoming = WyomingServer(settings, api.wyoming, self.gate, card.name)
        self.advertisement: Advertisement | None = None
        self._advertising: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (and announce the Wyoming server over zeroconf, in the background)."""
        self.dispatcher.answer_listeners.append(self.metrics.observe)
        try:
            if self.http is not None:
                await self.http.start()
            if self.console is not None and self.web is not None:
                await self.console.serve(self.web)
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
        from appliance.api.zeroconf_ad import Advertisement  # zeroconf, only when announcing

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
        if self.console is not None:
            await self.console.close()
        for server in (self.web, self.http):
            if server is not None:
                await server.close()


def _api_routes(context: Context, metrics: Metrics, app: web.Application) -> None:
    """The APIs' server: ``/metrics``, Ollama's routes and OpenAI's."""

    async def serve_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", serve_metrics)
    ollama_routes.add_routes(app, context)
    openai_routes.add_routes(app, context)

"""The console's application: its views, their routes and what they share.

A second HTTP server of the same kind as the APIs' (:class:`appliance.api.http_server.HttpApi`,
on the supervisor's loop), with server-rendered pages, one small script of our
own per page, and Server-Sent Events for what changes. Each page is a small
class in its own module that registers its routes with an :class:`Access`
through :meth:`Console.add`; :mod:`appliance.console.security` lets a request
reach a route only with what that access needs.

Build it with the running appliance's parts (:class:`ConsoleParts`), the gate
that every API request passes (the Talk page asks through it, like any other
client) and the metrics; :class:`appliance.api.Apis` does.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from appliance.api.gate import ApiGate
from appliance.api.http_server import HttpApi
from appliance.api.metrics import Metrics
from appliance.console.assets import StaticFiles
from appliance.console.auth import RECHECK_S, Auth
from appliance.console.parts import ConsoleParts
from appliance.console.render import Pages
from appliance.console.roles import Access, session_of
from appliance.logs import get_logger

log = get_logger("console")
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class View:
    """One page (or a group of routes) of the console; subclasses add their routes.

    ``start`` and ``close`` do nothing unless the view has background work.
    """

    def add_routes(self, console: Console) -> None:
        """Register the routes with :meth:`Console.add`."""
        raise NotImplementedError

    def start(self) -> None:
        """Start what runs in the background (on the loop)."""

    async def close(self) -> None:
        """Stop it."""


@dataclass(frozen=True)
class Route:
    """One registered route and what it needs."""

    method: str
    path: str
    handler: RouteHandler
    access: Access


class Console:
    """The console's views, their routes and their shared services."""

    def __init__(self, parts: ConsoleParts, gate: ApiGate, metrics: Metrics) -> None:
        from appliance.console.activity import Activity
        from appliance.console.health import Health
        from appliance.console.login import Login
        from appliance.console.manuals import Manuals
        from appliance.console.models_page import ModelsPage
        from appliance.console.overview import Overview
        from appliance.console.settings_page import SettingsPage
        from appliance.console.talk import Talk
        from appliance.console.world import World

        settings = parts.settings
        assert settings.api.web is not None
        self.web = settings.api.web
        self.parts = parts
        self.gate = gate
        self.metrics = metrics
        self.auth = Auth(self.web, settings.data_dir)
        self.pages = Pages(settings.device_id or "appliance", self.web.public_status)
        self.static = StaticFiles()
        self.routes: dict[tuple[str, str], Route] = {}
        self._widening: asyncio.Task[None] | None = None
        self.overview = Overview(self)
        self.views: list[View] = [Login(self), self.overview, Talk(self), Activity(self),
                                  World(self), Manuals(self), ModelsPage(self), Health(self),
                                  SettingsPage(self)]

    def add(self, method: str, path: str, handler: RouteHandler, access: Access) -> None:
        """Register a route (``path`` relative to the mount point, such as ``/talk``)."""
        self.routes[(method, path)] = Route(method, path, handler, access)

    def access_of(self, request: web.Request) -> Access | None:
        """What the matched route needs; ``None`` only when no route matched (a 404 or 405).

        aiohttp serves ``HEAD`` for every ``GET`` route: that twin has its GET's
        access. A route served but registered without one needs a login (fails closed).
        """
        if request.match_info.http_exception is not None:
            return None
        route = request.match_info.route
        path = route.resource.canonical if route.resource is not None else ""
        method = hdrs.METH_GET if route.method == hdrs.METH_HEAD else route.method
        found = self.routes.get((method, path))
        return found.access if found is not None else Access.ADMIN

    def add_routes(self, app: web.Application) -> None:
        """Every view's routes, and the assets."""
        self.add("GET", "/static/{name}", self.static.serve, Access.OPEN)
        for view in self.views:
            view.add_routes(self)
        for route in self.routes.values():
            if route.method == "GET":  # and HEAD
                app.router.add_get(route.path, route.handler)
            else:
                app.router.add_route(route.method, route.path, route.handler)

    def middlewares(self) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
        """The session and CSRF middleware of the console's server."""
        from appliance.console.security import Security

        return [Security(self).middleware]

    @staticmethod
    async def on_prepare(request: web.BaseRequest, response: web.StreamResponse) -> None:
        """The security headers, on every answer (refusals and streams included)."""
        from appliance.console.security import add_headers

        add_headers(request, response)

    async def serve(self, server: HttpApi) -> None:
        """Start ``server`` and the views' background work (the overview's samples, the log).

        Until a password is set, the console listens on loopback only, whatever
        ``api.web.listen`` says; it moves to its listen address as soon as one is
        (``appliance console password`` on the device, or its first-run page).
        """
        await self.auth.refresh(force=True)
        wide = server.host
        if self.auth.has_password() or _is_loopback(wide):
            await server.start()
        else:
            await server.start(host="::1" if ":" in wide else "127.0.0.1")
            log.warning("console_loopback_only", until="a password is set", port=server.port,
                        fix="appliance console password, or open the console on the device")
            self._widening = asyncio.create_task(self._widen(server, wide),
                                                 name="console: listen once a password is set")
        self.start()

    def start(self) -> None:
        """Start the views' background work (the overview's samples, the log tail)."""
        for view in self.views:
            view.start()

    async def _widen(self, server: HttpApi, host: str) -> None:
        while not self.auth.has_password():
            await asyncio.sleep(RECHECK_S)
            await self.auth.refresh()
        await server.rebind(host)

    async def close(self) -> None:
        """Stop it."""
        if self._widening is not None:
            self._widening.cancel()
            await asyncio.gather(self._widening, return_exceptions=True)
        for view in self.views:
            await view.close()

    def audit(self, request: web.Request, action: str, detail: str = "", *,
              journal: bool = True) -> None:
        """Note a change made from the console, with who made it: in the log, and in Activity.

        ``journal=False``: in the log only (what would flood Activity's bounded rows).
        """
        session = session_of(request)
        who = session.who if session is not None else f"anonymous@{request.remote}"
        log.info("console_action", who=who, action=action, detail=detail[:200])
        if journal:
            self.parts.journal.console_action(who, action, detail[:200])


def _is_loopback(host: str) -> bool:
    """Whether a listen host is loopback only (a name counts as not: it may be the LAN's)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

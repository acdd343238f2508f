"""One console over real parts, served as the appliance serves it, and the waits its tests share.

The console's fast tests build it the one way :func:`console_rig` does: settings
from dicts laid over a base (device ``t1``, data in ``tmp_path/data``, ``api.web``
on loopback), a real Journal, Status, WorldState, an ActionDesk over a FakeOutlet,
a Dispatcher over a scripted FakeGenerator, the ApiGate, Metrics with ``power``, a
knowledge context when ``knowledge.enabled``, and the Console, whose server
application is the one :class:`appliance.api.Apis` builds::

    rig = console_rig(tmp_path, PUBLIC_STATUS, password=PASSWORD)

    async def scenario() -> None:
        async with serving(rig) as client:
            assert (await client.get("/")).status == 200

    run(scenario)

``as_admin=True`` replaces the security middleware with one that logs every
request in (no CSRF token, no Host check): for tests of a page, not of the locks.
The doors themselves (login, CSRF, throttle) are tested through the real one.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from appliance.actions.world import WorldState
from appliance.api.gate import ApiGate
from appliance.api.http_server import HttpApi
from appliance.api.metrics import Metrics
from appliance.config import Settings, parse_settings
from appliance.config.schema_api import HttpSettings
from appliance.console import password as pw
from appliance.console.app import Console
from appliance.console.parts import ConsoleParts
from appliance.console.roles import SESSION, Session
from appliance.mqtt.contract import Topics
from appliance.rules import RuleSet
from appliance.service.action_desk import ActionDesk
from appliance.service.activity_log import ActivityQuery
from appliance.service.conversations import Conversations
from appliance.service.dispatcher import Dispatcher
from appliance.service.journal import Journal
from appliance.service.ratelimit import RateLimiter
from appliance.service.router import Router
from appliance.service.status import Status
from tests.fakes import FakeGenerator, FakeOutlet, Step
from tests.helpers import merge, yaml_text

if TYPE_CHECKING:
    from appliance.service.knowledge_context import KnowledgeContext

PASSWORD = "correct horse battery"
WHO = "admin@127.0.0.1"
"""Who a console change is by, for a client on loopback (the admin)."""
HTML = {"Accept": "text/html,application/xhtml+xml"}
"""A browser's Accept: a page that needs a login redirects it instead of answering 401."""
PUBLIC_STATUS: dict[str, Any] = {"api": {"web": {"public_status": True}}}

V = TypeVar("V")
ConsoleScenario = Callable[[TestClient, Console], Awaitable[None]]


@dataclass
class Outlet(FakeOutlet):
    """The bridge as the action desk and the console read it: never connected to a broker."""

    connected: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Rig:
    """A console over real parts, and the parts behind it (built by :func:`console_rig`)."""

    settings: Settings
    journal: Journal
    status: Status
    world: WorldState
    outlet: Outlet
    desk: ActionDesk
    local: FakeGenerator
    dispatcher: Dispatcher
    knowledge: KnowledgeContext | None
    console: Console
    app: web.Application
    """The server's application, not started yet (a test may set its keys first)."""

    @property
    def data(self) -> Path:
        """The device's ``data_dir``."""
        return self.settings.data_dir

    def view(self, kind: type[V]) -> V:
        """The console's view of class ``kind``."""
        return next(v for v in self.console.views if isinstance(v, kind))

    def published(self, topic: str) -> list[dict[str, Any]]:
        """The payloads delivered on ``topic``."""
        return [json.loads(m.payload) for _id, messages in self.outlet.delivered
                for m in messages if m.topic == topic]

    def audited(self) -> list[tuple[str, str]]:
        """``(action, detail)`` of each console change in the journal, oldest first."""
        rows = self.journal.activity(ActivityQuery(kind="console"))
        return [(row.title, row.text) for row in reversed(rows)]


def console_settings(tmp_path: Path, *config: Mapping[str, Any]) -> Settings:
    """The rig's settings: each of ``config`` laid over the base in turn (see the module)."""
    merged: dict[str, Any] = {"device_id": "t1", "data_dir": tmp_path / "data",
                              "api": {"web": {"listen": "127.0.0.1:0"}}}
    for overrides in config:
        merged = merge(merged, overrides)
    return parse_settings(yaml_text(merged), "c.yaml")


def console_rig(tmp_path: Path, *config: Mapping[str, Any], script: Sequence[Step] = (),
                clock: Callable[[], float] | None = None, password: str | None = None,
                as_admin: bool = False) -> Rig:
    """A console over real parts (see the module); serve it with :func:`serving`.

    ``script`` is what the dispatcher's generator answers; ``clock`` the world's
    (readings age when the test says); ``password`` is set beforehand, as
    ``appliance console password`` would; ``as_admin`` logs every request in.
    """
    settings = console_settings(tmp_path, *config)
    web_settings = settings.api.web
    assert web_settings is not None
    if password is not None:
        pw.write_hash(pw.password_path(web_settings, settings.data_dir),
                      pw.hash_password(password))
    topics = Topics.under(settings.base_topic)
    journal = Journal(settings.data_dir / "journal.sqlite3")
    status = Status()
    outlet = Outlet()
    world = WorldState(journal) if clock is None else WorldState(journal, clock=clock)
    desk = ActionDesk(settings, topics, outlet, world, None)  # type: ignore[arg-type]
    local = FakeGenerator(script)
    dispatcher = Dispatcher(
        router=Router(local), outlet=outlet, journal=journal, topics=topics,
        rules=RuleSet(settings.rules, topics.base), status=status, queue_size=4, stream=False,
        llm=settings.llm, actions=desk.service, world=world,
        conversations=Conversations(settings.conversation, journal))
    metrics = Metrics(status, settings.thermal.levels, settings.power)
    dispatcher.answer_listeners.append(metrics.observe)  # as Apis.start does
    knowledge = _knowledge(settings)
    console = Console(ConsoleParts(settings, None, status, journal, world, desk, knowledge),
                      ApiGate(dispatcher, RateLimiter(settings.mqtt.ask_rate_per_min)), metrics)
    middlewares = [_as_admin] if as_admin else console.middlewares()
    server = HttpApi(settings, HttpSettings(listen=web_settings.listen,
                                            allowed_hosts=web_settings.allowed_hosts),
                     metrics, console.add_routes, key="api.web", middlewares=middlewares,
                     on_prepare=[console.on_prepare], json_only=False)
    return Rig(settings, journal, status, world, outlet, desk, local, dispatcher, knowledge,
               console, server.app())


def _knowledge(settings: Settings) -> KnowledgeContext | None:
    """The running appliance's knowledge context, when ``knowledge.enabled`` (as compose's)."""
    if not settings.knowledge.enabled:
        return None
    from appliance.knowledge import index_path
    from appliance.service.knowledge_context import KnowledgeContext

    return KnowledgeContext(settings.knowledge, index_path(settings.data_dir))


@web.middleware
async def _as_admin(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every request logged in, as the security middleware would put the session."""
    request[SESSION] = Session("s1", "csrf", WHO, float("inf"))
    return await handler(request)


@asynccontextmanager
async def serving(rig: Rig, host: str = "127.0.0.1") -> AsyncIterator[TestClient]:
    """The dispatcher running, the console started, and a client of its server on ``host``.

    A rig serves once: at the end its journal and knowledge context close too
    (the journal's activity can still be read: that opens the file).
    """
    work = asyncio.create_task(rig.dispatcher.run(), name="rig dispatcher")
    rig.console.start()
    client = TestClient(TestServer(rig.app, host=host))
    try:
        await client.start_server()
        yield client
    finally:
        await client.close()
        await rig.console.close()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if rig.knowledge is not None:
            rig.knowledge.close()
        rig.journal.close()


def run(scenario: Callable[[], Awaitable[None]], deadline_s: float = 120) -> None:
    """Run ``scenario`` in a new event loop, with a deadline."""

    async def main() -> None:
        async with asyncio.timeout(deadline_s):
            await scenario()

    asyncio.run(main())


def run_console(rig: Rig, scenario: ConsoleScenario, *, host: str = "127.0.0.1",
                deadline_s: float = 120) -> None:
    """Run ``scenario(client, console)`` against ``rig`` served on ``host``."""

    async def served() -> None:
        async with serving(rig, host) as client:
            await scenario(client, rig.console)

    run(served, deadline_s)


def network_address() -> str:
    """An address of this machine on a network (not loopback): a client there is not local.

    Skips the test when there is none.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or address.startswith("127."):
        pytest.skip("this machine has no non-loopback address to play a network client")
    return address


# --- what the console streams ---------------------------------------------------------------


async def next_event(response: ClientResponse, name: str,
                     where: Callable[[dict[str, Any]], bool] = lambda _d: True) -> dict[str, Any]:
    """The data of the next SSE ``name`` event that satisfies ``where`` (no deadline: wrap it)."""
    kind = ""
    while True:
        line = (await response.content.readline()).decode()
        assert line, "the stream ended"
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: ") and kind == name:
            data = json.loads(line[6:])
            if where(data):
                return data


async def next_events(response: ClientResponse, name: str, count: int,
                      keep: Callable[[dict[str, Any]], bool] = lambda _: True,
                      ) -> list[dict[str, Any]]:
    """The data of the next ``count`` SSE ``name`` events that ``keep`` keeps."""
    found: list[dict[str, Any]] = []
    while len(found) < count:
        data = await next_event(response, name)
        if keep(data):
            found.append(data)
    return found


async def lines(response: ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON lines of a streamed answer, as they arrive."""
    async for raw in response.content:
        if raw.strip():
            yield json.loads(raw)


# --- the real login --------------------------------------------------------------------------


async def form_token(client: TestClient, page: str = "login") -> str:
    """Open the login (or first-run) page and read its pre-session token."""
    response = await client.get(f"/{page}", headers=HTML)
    assert response.status == 200, await response.text()
    found = re.search(r'data-token="([^"]+)"', await response.text())
    assert found, "the form carries no token"
    return found.group(1)


async def log_in(client: TestClient, password: str = PASSWORD) -> ClientResponse:
    """Post ``password`` through the login form; its answer."""
    token = await form_token(client)
    return await client.post("/login", json={"password": password},
                             headers={"X-CSRF-Token": token})


async def session_token(client: TestClient) -> str:
    """The CSRF token a logged-in page carries."""
    response = await client.get("/login", headers=HTML, allow_redirects=True)
    found = re.search(r'name="csrf-token" content="([^"]+)"', await response.text())
    assert found, "a logged-in page carries no CSRF token"
    return found.group(1)


async def sign_in(client: TestClient) -> str:
    """Log in with :data:`PASSWORD` through the form; the session's CSRF token."""
    ok = await log_in(client)
    assert ok.status == 200, await ok.text()
    return await session_token(client)

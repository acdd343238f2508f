"""The HTTP servers' doors, in milliseconds: the connection pool and the Host check."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from appliance.api.errors import ApiError
from appliance.api.http_checks import Doors
from appliance.api.http_connections import Connection, GuardedSite, Pool
from appliance.bench.broker import free_port
from appliance.config.schema_api import HttpSettings


@dataclass(eq=False)
class Client:
    """What the pool reads of a connection."""

    peer: str | None
    busy: bool = True  # trickling a request body
    idle_since: float = field(default_factory=time.monotonic)


def test_one_network_address_holds_at_most_a_quarter_and_loopback_is_not_capped() -> None:
    asyncio.run(_fill())  # the pool logs its refusals on the loop


async def _fill() -> None:
    pool = Pool(8, HttpSettings())
    lan = [cast(Connection, Client("192.0.2.7")) for _ in range(3)]
    assert [pool.admit(c) for c in lan] == [True, True, False]  # 8 // 4 = 2 each
    assert pool.admit(cast(Connection, Client("192.0.2.8")))  # another address gets in
    local = [cast(Connection, Client(address)) for address in
             ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.1", "127.0.0.2")]
    assert all(pool.admit(c) for c in local)
    assert not pool.admit(cast(Connection, Client("127.0.0.1")))  # the pool is full and busy


def test_a_proxy_listed_by_its_address_in_allowed_hosts_is_served() -> None:
    doors = Doors("0.0.0.0", ["10.1.2.3", "proxy.lan"], [])
    for host in ("10.1.2.3:8080", "proxy.lan", "localhost:8080", "127.0.0.1"):
        doors.check(make_mocked_request("GET", "/", headers={"Host": host}))
    with pytest.raises(ApiError, match="does not serve that Host"):
        doors.check(make_mocked_request("GET", "/", headers={"Host": "10.1.2.4:8080"}))


def test_a_silent_client_is_dropped_at_the_head_deadline_and_counted() -> None:
    """The head's deadline is the connection's first, even when idle_timeout_s is shorter."""
    assert asyncio.run(_silent_client(HttpSettings(header_timeout_s=0.3, idle_timeout_s=0.05))) \
        == ["slow_header"]


async def _silent_client(http: HttpSettings) -> list[str]:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    pool = Pool(4, http)
    kinds: list[str] = []
    pool.refusals.warning = lambda kind, **_: kinds.append(kind)  # type: ignore[method-assign]
    site = GuardedSite(runner, "127.0.0.1", free_port(), pool)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()
    finally:
        await runner.cleanup()
    return kinds

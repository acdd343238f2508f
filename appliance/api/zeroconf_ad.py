"""The Wyoming server announced over mDNS (``_wyoming._tcp``), so Home Assistant finds it.

As rhasspy's own servers do: the service is named ``<name>._wyoming._tcp.local.``
with the server's IPv4 address and port and no TXT properties. A server
listening on every interface (``0.0.0.0``) is announced with the address the
machine would reach the mDNS group from, and so is one listening on a host
name or an IPv6 address (the announcement is IPv4 only). Registration (probe and announce)
takes over a second, so it runs in the background; a network without
multicast only costs a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from appliance.logs import get_logger

log = get_logger("zeroconf")

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"
CLOSE_LIMIT_S = 3.0


def route_address() -> str:
    """The IPv4 address this machine sends to the mDNS group from (``OSError`` without a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((MDNS_GROUP, 5353))
        return str(probe.getsockname()[0])


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3


def service_name(name: str) -> str:
    """A DNS-SD instance name: no dots, at most 63 bytes."""
    label = name.replace(".", "-").strip() or "appliance"
    while len(label.encode()) > 63:
        label = label[:-1]
    return f"{label}.{SERVICE_TYPE}"


class Advertisement:
    """Announces one Wyoming server while it runs."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.port = service_name(name), host, port
        self.host_name = f"{self.name.removesuffix('.' + SERVICE_TYPE)}.local."
        self._zeroconf: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self.registered = asyncio.Event()

    async def run(self) -> None:
        """Register the service (a long task: probing takes about a second)."""
        everywhere = not _is_ipv4(self.host) or self.host == "0.0.0.0"
        try:
            address = route_address() if everywhere else self.host
            self._zeroconf = AsyncZeroconf(
                interfaces=InterfaceChoice.All if everywhere else [address],
                ip_version=IPVersion.V4Only)
            self._info = AsyncServiceInfo(SERVICE_TYPE, self.name, port=self.port,
                                          server=self.host_name,
                                          addresses=[socket.inet_aton(address)])
            await (await self._zeroconf.async_register_service(self._info,
                                                               allow_name_change=True))
        except (OSError, ZeroconfError) as exc:
            log.warning("zeroconf_unavailable", reason=str(exc) or type(exc).__name__,
                        host=self.host)
            await self._close_zeroconf()
            return
        self.registered.set()
        log.info("zeroconf_registered", name=self._info.name, address=address, port=self.port)

    async def close(self) -> None:
        """Say goodbye on the network and stop."""
        if self._zeroconf is not None and self._info is not None and self.registered.is_set():
            with contextlib.suppress(OSError, ZeroconfError, TimeoutError):
                await asyncio.wait_for(self._zeroconf.async_unregister_service(self._info),
                                       CLOSE_LIMIT_S)
        await self._close_zeroconf()

    async def _close_zeroconf(self) -> None:
        if self._zeroconf is not None:
            with contextlib.suppress(OSError, ZeroconfError, TimeoutError):
                await asyncio.wait_for(self._zeroconf.async_close(), CLOSE_LIMIT_S)
            self._zeroconf = None

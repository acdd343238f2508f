"""Who may connect to the Wyoming server, how many at once, and how refusals are logged.

The Wyoming protocol has no authentication, so the network is the lock:
``api.wyoming.allowed_clients`` (addresses or CIDR networks; by default
loopback and the private and link-local ranges) says who may talk to it, and
a connection from anywhere else is closed before a byte is read. At most
``api.wyoming.max_connections`` clients are served at once, well below the
process's file-descriptor limit, so a flood of sockets cannot starve the
device of the files it needs itself. Refusals are logged through a
:class:`~appliance.log_limit.RateLimitedLog`: at most one line every few
seconds, counting them (``not_allowed``, ``full``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from appliance.log_limit import RateLimitedLog
from appliance.logs import get_logger

log = get_logger("wyoming")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``allowed_clients`` as networks; raises ``ValueError`` naming a bad entry."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


class Admission:
    """Decides whether a new connection is served."""

    def __init__(self, allowed: Iterable[str], max_connections: int) -> None:
        self.allowed = networks(allowed)
        self.max_connections = max_connections
        self.refusals = RateLimitedLog(log, "wyoming_connection_refused")

    def allows(self, peer: Any) -> bool:
        """Whether the peer address (``peername``'s first item; not a tuple: a unix socket)."""
        if not isinstance(peer, tuple):
            return True
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's IPv4 client
        return any(address in network for network in self.allowed)

    def refuse(self, peer: Any, open_now: int) -> str | None:
        """Why a client at ``peer`` is not served while ``open_now`` are, logged; else ``None``."""
        if not self.allows(peer):
            kind, reason = "not_allowed", "address not in api.wyoming.allowed_clients"
        elif open_now >= self.max_connections:
            kind = "full"
            reason = f"{self.max_connections} connections already (api.wyoming.max_connections)"
        else:
            return None
        address = str(peer[0]) if isinstance(peer, tuple) else "local"
        self.refusals.warning(kind, peer=address, reason=reason)
        return reason

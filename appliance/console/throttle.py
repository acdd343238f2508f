"""Login attempts per client: after each wrong password a longer wait before the next is heard.

The first failure from a client makes it wait 1 s, the next 2 s, then 4 s, 8 s
... up to 60 s; meanwhile its attempts are answered 429 with ``Retry-After``
and the password is not even checked (no hashing on demand for a guesser). A
client has one attempt in flight at a time. A right password clears its
record; a record whose last failure is 15 minutes old is forgotten.

Clients are keyed by address (an IPv6 client by its /64, which one host
usually owns whole); at most :data:`CAPACITY` are remembered, the least
recently failed forgotten first, so memory stays bounded whatever the number
of addresses. Behind a reverse proxy every client shares the proxy's address,
and so its delay: a guesser there slows the others' logins too, never the
other way round.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from appliance.api.http_checks import ip_of

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
FORGET_S = 15 * 60.0
CAPACITY = 4096
BUSY = math.inf
"""``not_before`` while an attempt is being checked."""


@dataclass
class _Record:
    failures: int = 0
    not_before: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """The growing delay between one client's login attempts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 capacity: int = CAPACITY) -> None:
        self.clock = clock
        self.capacity = capacity
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def begin(self, client: str | None) -> float:
        """Start an attempt: 0.0, or the seconds to wait before one is heard (refused)."""
        key = _key(client)
        now = self.clock()
        record = self.records.get(key)
        if record is not None and record.failures and now - record.last_failure > FORGET_S:
            record = self.records[key] = _Record()
        if record is None:
            record = self._remember(key)
        if now < record.not_before:
            return 1.0 if record.not_before == BUSY else record.not_before - now
        record.not_before = BUSY
        return 0.0

    def end(self, client: str | None, ok: bool) -> None:
        """End the attempt that :meth:`begin` let through: right (``ok``) or wrong."""
        key = _key(client)
        record = self.records.get(key)
        if ok or record is None:  # forgotten meanwhile (capacity): nothing to hold it to
            self.records.pop(key, None)
            return
        now = self.clock()
        record.failures += 1
        record.last_failure = now
        record.not_before = now + min(FIRST_DELAY_S * 2 ** (record.failures - 1), MAX_DELAY_S)
        self.records.move_to_end(key)

    def _remember(self, key: str) -> _Record:
        while len(self.records) >= self.capacity:
            self.records.popitem(last=False)
        record = self.records[key] = _Record()
        return record


def _key(client: str | None) -> str:
    """A client's address; for IPv6 its /64."""
    if not client:
        return "?"
    ip = ip_of(client)
    if ip is None:
        return client[:100]
    if ip.version == 6:  # ip_of gives an IPv4-mapped address as IPv4
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)

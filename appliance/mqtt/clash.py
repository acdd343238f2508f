"""Telling that another device uses our MQTT client id, and backing off when it does.

An MQTT broker keeps one session per client id and hands it to whichever
client connected last. Two devices with one ``device_id`` (a cloned SD card:
it defaults to the hostname) share the client id ``appliance-<device_id>``,
so each connection kicks the other off, and both reconnect within a second,
for ever: each time republishing ``online``, discovery and state, and nothing
says why. :class:`Clash` watches the connection's ups and downs for that
pattern:

* a takeover is a drop that the broker calls one (MQTT v5 reason code 0x8E,
  "Session taken over": EMQX says so), or the :data:`QUICK_DROPS`-th drop in
  a row within :data:`QUICK_DROP_S` of being accepted (mosquitto 2.0 just
  closes the connection);
* each takeover names the clash (:attr:`Clash.text`: the service's state
  shows it as a problem, ``doctor`` reads it from there, the log says
  ``device_id_clash``) and asks to wait before reconnecting, doubling from
  :data:`TAKEOVER_START_S` up to :data:`TAKEOVER_MAX_S`, so that the other
  device stays connected for a while and shows the clash in its own state;
* while a clash is named, every later drop counts as a takeover too, until we
  have stayed connected :data:`CLASH_OVER_S` without one: then the clash is
  over, its text cleared and ``on_over`` called (the other device would have
  taken the session back long before).

It keeps no socket and sends nothing: the bridge tells it each connection and
drop, and holds off the seconds it answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance.logs import get_logger

log = get_logger("bridge")

SESSION_TAKEN_OVER = 0x8E
"""The MQTT v5 DISCONNECT reason code of a broker that says another client took the session."""
QUICK_DROP_S = 10.0
"""A drop this soon after the broker accepted us is quick."""
QUICK_DROPS = 3
"""This many quick drops in a row are a takeover (for brokers that do not say so)."""
TAKEOVER_START_S = 5.0
TAKEOVER_MAX_S = 300.0
CLASH_OVER_S = 900.0
"""Connected this long without a takeover, the clash is over (the other device would be back)."""


class Clash:
    """Counts takeovers of our client id; names the clash and says how long to back off.

    ``where`` (the broker, for log lines), ``client_id`` and ``device_id`` name
    the clash; ``on_over`` runs on the loop once a named clash is over.
    ``quick_s`` and ``over_s`` default to :data:`QUICK_DROP_S` and
    :data:`CLASH_OVER_S`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str, client_id: str,
                 device_id: str, on_over: Callable[[], None], *,
                 quick_s: float = QUICK_DROP_S, over_s: float = CLASH_OVER_S) -> None:
        self.loop, self.where, self.client_id, self.device_id = loop, where, client_id, device_id
        self.on_over, self.quick_s, self.over_s = on_over, quick_s, over_s
        self.text: str | None = None
        """What is wrong and how to fix it, while a clash is named; else ``None``."""
        self.takeovers = 0
        self._quick_drops = 0
        self._connected_at = 0.0
        self._over: asyncio.TimerHandle | None = None

    def connected(self) -> None:
        """The broker accepted us; staying connected ``over_s`` ends a named clash."""
        self._connected_at = self.loop.time()
        if self.text is not None:
            self._over = self.loop.call_later(self.over_s, self._ended)

    def dropped(self, was_connected: bool, code: int, reason: str) -> float | None:
        """A lost connection: the seconds to back off if it was a takeover, else ``None``.

        ``code`` and ``reason`` are the broker's (or paho's) reason for the
        drop; ``was_connected`` says the broker had accepted this connection
        (a failed attempt to connect is no drop).
        """
        self.cancel()
        quick = was_connected and self.loop.time() - self._connected_at < self.quick_s
        self._quick_drops = self._quick_drops + 1 if quick else 0
        if not (code == SESSION_TAKEN_OVER or self._quick_drops >= QUICK_DROPS
                or (was_connected and self.text is not None)):
            return None
        self.takeovers += 1
        wait = min(TAKEOVER_START_S * 2 ** (self.takeovers - 1), TAKEOVER_MAX_S)
        self.text = (f"another client uses this device's MQTT client id {self.client_id!r} "
                     f"(device_id {self.device_id!r}; a cloned SD card?): the broker keeps "
                     "handing the session from one to the other; give each device its own "
                     "device_id (docs/fleet.md)")
        log.error("device_id_clash", broker=self.where, client_id=self.client_id,
                  device_id=self.device_id, takeovers=self.takeovers, retry_in_s=wait,
                  code=code, reason=reason, hint="give each device its own device_id")
        return wait

    def cancel(self) -> None:
        """Forget the wait for the clash to end (the connection is gone, or closing)."""
        if self._over is not None:
            self._over.cancel()
            self._over = None

    def _ended(self) -> None:
        log.info("device_id_clash_over", client_id=self.client_id, takeovers=self.takeovers)
        self.text, self.takeovers, self._over = None, 0, None
        self.on_over()

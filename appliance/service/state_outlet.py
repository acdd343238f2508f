"""The retained ``<base>/state`` message: the derived state and the process's own figures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from appliance.hardware import load_average, rss_bytes
from appliance.protocol.messages import Outgoing
from appliance.service.status import Status


class StateOutlet:
    """Publishes ``status`` on ``topic``, retained, with memory, load and power added.

    Facts change in bursts (a request starts: running, queue depth, state), so
    :meth:`schedule`, the status listener, sends one message at the end of the
    loop turn however many facts changed in it; :meth:`publish` sends at once
    (on connecting, and as the periodic heartbeat). ``worker_pid`` counts the
    model worker's memory in; ``power_w`` is the meter's reading, if any.
    """

    def __init__(self, status: Status, topic: str, publish: Callable[[Outgoing], None], *,
                 worker_pid: Callable[[], int | None],
                 power_w: Callable[[], float | None]) -> None:
        self.status, self.topic, self._send = status, topic, publish
        self._worker_pid, self._power_w = worker_pid, power_w
        self._scheduled = False

    def schedule(self) -> None:
        """Publish once this loop turn is over (on the loop)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.publish)

    def publish(self) -> None:
        """Publish now."""
        self._scheduled = False
        status, worker = self.status, self._worker_pid()
        status.rss_mb = (rss_bytes() + (rss_bytes(worker) if worker else 0)) / (1 << 20)
        power = self._power_w()
        status.power_w = None if power is None else round(power, 2)
        status.load_1m = load_average()
        self._send(Outgoing(self.topic, json.dumps(status.as_dict()).encode(), retain=True))

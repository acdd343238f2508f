"""The supervisor's long-running parts, each watched.

A part is a coroutine that runs until shutdown. One that crashes (or ends
when it should not) is logged with its traceback and started again after a
backoff; one that keeps crashing ends the process with an error, so systemd
restarts the whole service. :meth:`Parts.dead` names the parts not running
right now, which is what the systemd watchdog consults. Once shutdown has
begun (:meth:`Parts.stopping`), a part that ends is done, not crashed: a
clean stop logs no error and schedules no restart, so log-based alerting
sees no crash on every reboot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from appliance.logs import get_logger

log = get_logger("parts")

RESTART_START_S = 1.0
RESTART_MAX_S = 30.0
CRASH_WINDOW_S = 600.0
MAX_CRASHES = 5
"""Crashes of one part within :data:`CRASH_WINDOW_S` before the whole process gives up."""


@dataclass
class _Part:
    name: str
    factory: Callable[[], Awaitable[None]]
    alive: bool = False
    crashes: list[float] = field(default_factory=list)


class Parts:
    """Starts, watches and restarts parts; ``on_fatal(reason)`` when one keeps failing."""

    def __init__(self, on_fatal: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_fatal = on_fatal
        self.clock = clock
        self._parts: dict[str, _Part] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as part ``name`` until :meth:`stop`."""
        part = self._parts[name] = _Part(name, factory)
        self._tasks.append(asyncio.create_task(self._run(part), name=name))

    async def _run(self, part: _Part) -> None:
        while not self._stopping:
            part.alive = True
            try:
                await part.factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("part_crashed", part=part.name)
            else:
                if self._stopping:
                    return
                log.error("part_ended", part=part.name)
            part.alive = False
            if self._stopping:
                return  # crashed while stopping: nothing to restart it for
            now = self.clock()
            part.crashes = [t for t in part.crashes if now - t < CRASH_WINDOW_S] + [now]
            if len(part.crashes) >= MAX_CRASHES:
                self.on_fatal(f"{part.name} crashed {len(part.crashes)} times in "
                              f"{CRASH_WINDOW_S / 60:.0f} minutes")
                return
            delay = min(RESTART_START_S * 2 ** (len(part.crashes) - 1), RESTART_MAX_S)
            log.warning("part_restart", part=part.name, in_s=delay)
            await asyncio.sleep(delay)

    def dead(self) -> list[str]:
        """The parts not running right now (crashed and waiting to restart, or given up)."""
        return [p.name for p in self._parts.values() if not p.alive]

    def stopping(self) -> None:
        """Shutdown has begun: parts that end from now on are not restarted."""
        self._stopping = True

    async def stop(self) -> None:
        """Cancel every part and wait for them."""
        self.stopping()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""``appliance run``: the supervisor owns the lifecycle of the parts.

:func:`~appliance.service.compose.compose` builds the parts; the supervisor
locks the data_dir, starts them on one asyncio loop, watches them
(:class:`~appliance.service.parts.Parts`), keeps systemd informed (``READY=1``
once the model is loaded, broker or not; ``WATCHDOG=1`` while every part is
alive) and stops them on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.config import Settings
from appliance.generate.local import ModelWorker
from appliance.logs import get_logger
from appliance.mqtt.contract import Topics
from appliance.protocol.messages import error_message
from appliance.service.compose import Service, compose
from appliance.service.dispatcher import Dispatcher
from appliance.service.instance_lock import InstanceLock
from appliance.service.journal import JournalError
from appliance.service.notify import Notifier
from appliance.service.parts import Parts
from appliance.service.status import Status

if TYPE_CHECKING:
    from gpiozero.pins import Factory

    from appliance.gpio import GpioDevices
    from appliance.voice.controller import VoiceController

log = get_logger("supervisor")

STATE_EVERY_S = 30.0
FINISH_ON_STOP_S = 4.0
SHUTDOWN_LIMIT_S = 13.0
"""After SIGTERM the process ends within this, whatever hangs (systemd's TimeoutStopSec is 15 s)."""


class Supervisor:
    """Starts, watches and stops the parts of one running appliance."""

    def __init__(self, settings: Settings, config_path: Path | None,
                 pin_factory: Factory | None = None) -> None:
        self.settings, self.config_path, self.pin_factory = settings, config_path, pin_factory
        self.topics = Topics.under(settings.base_topic)
        self.status = Status(max_tokens=settings.llm.max_tokens)
        self.notifier = Notifier()
        self.lock = InstanceLock(settings.data_dir)
        self.parts = Parts(self._fatal)
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.service: Service | None = None  # built once run() has a loop
        self._deadline: threading.Timer | None = None

    @property
    def built(self) -> Service:
        """The parts (once :meth:`run` has built them)."""
        assert self.service is not None, "the supervisor is not running"
        return self.service

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatcher of the running service."""
        return self.built.dispatcher

    @property
    def worker(self) -> ModelWorker:
        """The local model worker of the running service."""
        return self.built.worker

    @property
    def voice(self) -> VoiceController | None:
        """Voice, when it is enabled."""
        return self.built.voice

    @property
    def gpio(self) -> GpioDevices | None:
        """The GPIO devices, when there are some."""
        return self.built.gpio

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code."""
        self.lock.acquire()
        try:
            return await self._run()
        finally:
            if self._deadline is not None:
                self._deadline.cancel()  # shut down in time (it matters run in-process)
            self.lock.release()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested)
        try:
            self.service = service = await compose(self.settings, self.config_path,
                                                   self.status, pin_factory=self.pin_factory)
        except JournalError as exc:
            log.error("no_journal", error=str(exc))
            raise
        journal, bridge, dispatcher = service.journal, service.bridge, service.dispatcher
        if journal.recovered:
            bridge.deliver(None, [error_message(self.topics.error, "journal", journal.recovered)])
        restored = dispatcher.restore()
        if restored:
            log.info("restored_requests", count=restored)
        if service.apis is not None:
            # Before any part starts: a port in use is one line, not a half-started service.
            await service.apis.start()
        if service.voice is not None:
            service.voice.start()
        service.watchdog.observe()
        if service.power.metered:
            self.parts.start("power", service.power.run)
        self.parts.start("worker", service.worker.run)
        self.parts.start("thermal", service.watchdog.run)
        self.parts.start("dispatcher", dispatcher.run)
        self.parts.start("intake", service.intake.run)
        self.parts.start("keep-alive", self._keep_alive)
        self.parts.start("world", service.desk.publish_world)
        bridge.start()
        self.notifier.status("loading the model")
        ready = asyncio.create_task(self._wait_ready())
        await self.stop.wait()
        ready.cancel()
        await self._shutdown()
        return self.exit_code

    def _stop_requested(self) -> None:
        if self._deadline is None:
            # Whatever hangs in shutdown, systemd must not have to SIGKILL us.
            self._deadline = threading.Timer(SHUTDOWN_LIMIT_S, self._exit_now)
            self._deadline.daemon = True
            self._deadline.start()
        self.stop.set()

    @staticmethod
    def _exit_now() -> None:
        log.error("shutdown_timeout", limit_s=SHUTDOWN_LIMIT_S)
        os._exit(1)

    def _fatal(self, reason: str) -> None:
        """A part keeps crashing: end with an error, so that systemd restarts us."""
        log.error("giving_up", reason=reason)
        self.exit_code = 1
        self._stop_requested()

    async def _wait_ready(self) -> None:
        worker = self.built.worker
        await worker.ready.wait()
        self.status.update(model=worker.model, ready=True)
        self.notifier.ready(f"ready: {worker.model}")
        log.info("ready", model=worker.model, base_topic=self.topics.base,
                 broker="connected" if self.built.bridge.connected.is_set() else "not yet")

    @property
    def healthy(self) -> bool:
        """Every part alive and making progress (what earns ``WATCHDOG=1``)."""
        dead = self.parts.dead()
        if dead:
            return False
        if not self.built.bridge.healthy:
            return False
        return self.voice is None or self.voice.alive

    async def _keep_alive(self) -> None:
        """Ping systemd's watchdog at half its interval while healthy; the state every 30 s."""
        tick = min((self.notifier.watchdog_s or STATE_EVERY_S) / 2, STATE_EVERY_S)
        since_state = 0.0
        while True:
            await asyncio.sleep(tick)
            if self.healthy:
                self.notifier.watchdog()
            else:
                log.warning("unhealthy", dead=self.parts.dead(), bridge=self.built.bridge.healthy)
            since_state += tick
            if since_state >= STATE_EVERY_S:
                since_state = 0.0
                self.built.state_outlet.publish()

    async def _shutdown(self) -> None:
        log.info("stopping")
        service = self.built
        self.parts.stopping()  # the worker ends first, on purpose: not a crash to restart
        self.notifier.stopping()
        if service.apis is not None:
            await service.apis.close()
        await service.dispatcher.drain(FINISH_ON_STOP_S)
        service.desk.close()  # the questions still waiting end in a record
        await service.worker.stop()
        await self.parts.stop()
        await service.bridge.close()
        if service.knowledge is not None:
            service.knowledge.close()
        close_remote = getattr(service.remote, "close", None)  # an HTTP client to close
        if close_remote is not None:
            await close_remote()
        service.journal.close()
        if service.gpio is not None:
            service.gpio.close()
        if service.voice is not None:
            service.voice.close()
        log.info("stopped")

def run(settings: Settings, config_path: Path | None) -> int:
    """Run the supervisor in a fresh event loop."""
    async def main() -> int:
        return await Supervisor(settings, config_path).run()

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main())
    return 130

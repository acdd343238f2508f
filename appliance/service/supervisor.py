"""``appliance run``: the supervisor, a thin wire between the parts.

It locks the data_dir, starts the model worker (a child process), the MQTT
bridge, the dispatcher, the thermal watchdog and voice on one asyncio loop,
watches them (:class:`~appliance.service.parts.Parts`), keeps systemd
informed, publishes the state, and shuts everything down on SIGTERM.

``READY=1`` goes to systemd once the model is loaded; the broker is not
needed for that: an offline appliance answers by voice, and MQTT connects
whenever the broker can be reached. ``WATCHDOG=1`` goes out every half
``WatchdogSec`` while every part is alive, including while a dying model
worker is being restarted, which is the supervisor doing its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from gpiozero.pins import Factory

from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.config.schema import ThermalLevel
from appliance.config.secrets import read_api_key
from appliance.generate.base import Generator
from appliance.generate.local import ModelWorker
from appliance.generate.mqtt_remote import MqttGenerator
from appliance.generate.openai_http import OpenAIGenerator
from appliance.gpio import GpioParts, GpioUnavailable
from appliance.knowledge import index_path
from appliance.logs import get_logger
from appliance.mqtt.bridge import Bridge, Inbound, Refusal
from appliance.mqtt.contract import Topics
from appliance.mqtt.discovery import discovery_message
from appliance.power.monitor import PowerMonitor
from appliance.protocol.messages import Outgoing, Request
from appliance.rules import RuleSet
from appliance.service.action_desk import ActionDesk
from appliance.service.dispatcher import Dispatcher, Rejected
from appliance.service.instance_lock import InstanceLock
from appliance.service.intake import Intake
from appliance.service.journal import Journal, JournalError
from appliance.service.knowledge_context import KnowledgeContext
from appliance.service.notify import Notifier
from appliance.service.parts import Parts
from appliance.service.router import Router
from appliance.service.state_outlet import StateOutlet
from appliance.service.status import Status
from appliance.thermal import ThermalWatchdog
from appliance.voice.controller import VoiceController

if TYPE_CHECKING:
    from appliance.api import Apis

log = get_logger("supervisor")

STATE_EVERY_S = 30.0
FINISH_ON_STOP_S = 4.0
SHUTDOWN_LIMIT_S = 13.0
"""After SIGTERM the process ends within this, whatever hangs (systemd's TimeoutStopSec is 15 s)."""


class Supervisor:
    """Owns the parts of one running appliance."""

    def __init__(self, settings: Settings, config_path: Path | None,
                 pin_factory: Factory | None = None) -> None:
        self.settings = settings
        self.pin_factory = pin_factory
        self.gpio: GpioParts | None = None
        self.voice: VoiceController | None = None
        self.apis: Apis | None = None
        self.topics = Topics.under(settings.base_topic)
        self.status = Status(max_tokens=settings.llm.max_tokens)
        self.notifier = Notifier()
        self.lock = InstanceLock(settings.data_dir)
        secrets = [name for name in (settings.mqtt.password_env,
                                     settings.escalation.api_key_env) if name]
        self.worker = ModelWorker(config_path, secret_env=secrets,
                                  on_change=self._worker_changed)
        self.remote: Generator | None = None
        self.rules = RuleSet(settings.rules, settings.base_topic)
        self.watchdog = ThermalWatchdog(settings.thermal, self._on_level,
                                        on_reading=self._show_temperature)
        self.parts = Parts(self._fatal)
        self.stop = asyncio.Event()
        self.exit_code = 0
        self._deadline: threading.Timer | None = None

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
            self.journal = journal = Journal(self.settings.data_dir / "journal.sqlite3")
        except JournalError as exc:
            log.error("no_journal", error=str(exc))
            raise
        self.bridge = bridge = Bridge(self.settings, journal, [], self._on_message,
                                      self._on_connected, on_refused=self._on_refused,
                                      on_change=self._bridge_changed)
        self.remote = self._remote_generator()
        self.router = Router(self.worker, self.remote, self.settings.escalation,
                             self.settings.thermal.levels, kid_safe=self.settings.voice.kid_safe,
                             on_change=self._router_changed)
        self.dispatcher = Dispatcher(
            router=self.router, outlet=bridge, journal=journal, topics=self.topics,
            rules=self.rules, status=self.status, queue_size=self.settings.mqtt.queue_size,
            stream=self.settings.mqtt.stream_answers, llm=self.settings.llm,
            on_alert=lambda: self.gpio.alert() if self.gpio else None,
            kid_safe=self.settings.voice.kid_safe, device_id=self.settings.device_id)
        if self.settings.knowledge.enabled:
            self.dispatcher.knowledge = KnowledgeContext(self.settings.knowledge,
                                                         index_path(self.settings.data_dir))
        self.intake = intake = Intake(self.settings, self.topics, self.rules, self.dispatcher,
                                      bridge, bridge.ack, self._publish_discovery, self.status)
        intake.forward = bridge.forward
        self.world = intake.world = self.dispatcher.world = WorldState(journal)
        if isinstance(self.remote, MqttGenerator):
            remote = self.remote
            intake.route(remote.subscriptions, remote.handles,
                         lambda m: remote.on_message(m.topic, m.payload))
        self._router_changed()
        if journal.recovered:
            self._error("journal", journal.recovered)
        self.state_outlet = StateOutlet(
            self.status, self.topics.state, bridge.publish, worker_pid=lambda: self.worker.pid,
            power_w=lambda: self.dispatcher.power.power_w if self.dispatcher.power else None)
        self.status.listeners += [self.state_outlet.schedule, self._show_state]
        restored = self.dispatcher.restore()
        if restored:
            log.info("restored_requests", count=restored)
        if self.settings.api.http is not None or self.settings.api.wyoming is not None:
            from appliance.api import Apis  # aiohttp and wyoming load only when asked for

            # Before any part starts: a port in use is one line, not a half-started service.
            self.apis = Apis(self.settings, self.dispatcher, self.status)
            await self.apis.start()
        self._start_gpio(loop)
        self.desk = ActionDesk(self.settings, self.topics, bridge, self.world,
                               self.gpio.set_output if self.gpio is not None else None)
        self.dispatcher.actions = self.desk.service
        intake.route(self.desk.topics_handled, self.desk.topics_handled.__contains__,
                     self.desk.on_command)
        if self.settings.voice.enabled:
            self._start_voice(loop)
        self.watchdog.observe()
        self.dispatcher.power = power = await PowerMonitor.open(self.settings.power)
        if power.metered:
            self.parts.start("power", power.run)
        self.parts.start("worker", self.worker.run)
        self.parts.start("thermal", self.watchdog.run)
        self.parts.start("dispatcher", self.dispatcher.run)
        self.parts.start("keep-alive", self._keep_alive)
        self.parts.start("world", self.desk.publish_world)
        bridge.subscriptions = intake.subscriptions()
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

    def _on_message(self, inbound: Inbound) -> None:
        self.intake(inbound)

    async def _wait_ready(self) -> None:
        await self.worker.ready.wait()
        self.status.update(model=self.worker.model, ready=True)
        self.notifier.ready(f"ready: {self.worker.model}")
        log.info("ready", model=self.worker.model, base_topic=self.topics.base,
                 broker="connected" if self.bridge.connected.is_set() else "not yet")

    def _remote_generator(self) -> Generator | None:
        """The bigger model of ``escalation``, if it is on."""
        escalation = self.settings.escalation
        if not escalation.enabled:
            return None
        if escalation.mqtt_topic is not None:
            return MqttGenerator(escalation.mqtt_topic, f"{self.topics.base}/reply",
                                 self.bridge.publish,
                                 first_token_timeout_s=escalation.first_token_timeout_s,
                                 timeout_s=escalation.timeout_s)
        assert escalation.endpoint is not None  # the config checks require one of the two
        return OpenAIGenerator(escalation.endpoint, escalation.model,
                               read_api_key(self.settings),
                               first_token_timeout_s=escalation.first_token_timeout_s,
                               timeout_s=escalation.timeout_s)

    def _router_changed(self) -> None:
        described = self.router.describe()
        if described is not None:
            self.status.update(extra={**self.status.extra, "escalation": described})

    def _worker_changed(self) -> None:
        worker = self.worker
        down = worker.was_ready and not worker.ready.is_set()
        self.status.problem("model", (worker.last_error or "the model worker is restarting")
                            if down else None)
        if worker.ready.is_set():
            self.status.update(model=worker.model, n_threads=worker.n_threads)

    def _bridge_changed(self) -> None:
        self.status.problem("outbox", self.bridge.outbox_error)
        self.status.problem("mqtt", self.bridge.clash.text)

    def _start_gpio(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.settings.gpio.enabled:
            log.info("gpio_disabled")
            return

        def on_event(name: str, event: dict[str, object]) -> None:  # gpiozero's thread
            loop.call_soon_threadsafe(self.bridge.publish, Outgoing(
                self.topics.event(name), json.dumps(event).encode()))

        try:
            self.gpio = GpioParts(self.settings.gpio, on_event, self.pin_factory)
        except GpioUnavailable as exc:
            log.warning("running_without_gpio", reason=str(exc))

    def _start_voice(self, loop: asyncio.AbstractEventLoop) -> None:
        self.voice = voice = VoiceController(
            self.settings, loop, submit=self._submit_voice,
            cancel_running=self._cancel_running, prefill=self.dispatcher.prefill,
            publish=self.bridge.publish, facts=self.status.update,
            on_error=self._on_voice_error, on_action=self._voice_intent,
            pin_factory=self.pin_factory)
        voice.start()
        self.dispatcher.outlets.speaker = voice.speaker

    def _voice_intent(self, intent: str) -> None:
        if self.voice is not None:
            self.desk.spoken(intent, self.voice.say)

    def _submit_voice(self, request: Request) -> None:
        try:
            self.dispatcher.submit(request)
        except (Rejected, JournalError) as exc:
            log.warning("voice_request_dropped", reason=str(exc))

    def _cancel_running(self) -> None:
        running = self.dispatcher.running
        if running is not None:
            self.dispatcher.cancel(running.id)

    def _show_state(self) -> None:
        if self.gpio is not None:
            self.gpio.show_state(self.status.state, self.voice is not None and self.voice.failed)

    def _on_voice_error(self, message: str) -> None:
        log.error("voice_unavailable", error=message)
        if self.voice is not None:
            self.voice.failed = True
        self.status.problem("voice", message)
        self._error("voice", message)

    def _error(self, topic: str, message: str, request_id: str | None = None) -> None:
        body = {"topic": topic, "error": message}
        if request_id is not None:
            body = {"id": request_id, **body}
        self.bridge.deliver(None, [Outgoing(self.topics.error, json.dumps(body).encode())])

    def _on_refused(self, refusal: Refusal) -> None:
        self._error(refusal.topic, f"the broker refused the message: {refusal.reason}"
                    + (f" (reason code 0x{refusal.code:02X})" if refusal.code else ""),
                    refusal.request_id)

    def _show_temperature(self) -> None:
        watchdog = self.watchdog
        self.status.update(temp_c=watchdog.celsius)
        self.status.problem("thermal", watchdog.sensor_error)
        if self.gpio is not None:
            self.gpio.show_level(watchdog.index, watchdog.celsius,
                                 sensor_lost=watchdog.sensor_error is not None)

    def _on_level(self, level: ThermalLevel) -> None:
        budget = level.budget(self.settings.llm.max_tokens)
        self.router.set_budget(budget)
        self.worker.set_threads(level.n_threads, level.n_threads_batch)
        self.dispatcher.set_level(level, throttled=self.watchdog.index > 0)
        self.status.update(throttle_level=level.name, max_tokens=budget,
                           n_threads=self.worker.n_threads)

    def _on_connected(self) -> None:
        self._publish_discovery()
        self.state_outlet.publish()

    def _publish_discovery(self) -> None:
        discovery = self.settings.mqtt.discovery
        if discovery.enabled:
            self.bridge.publish(discovery_message(discovery.prefix, self.settings.device_id,
                                                  self.topics, self.settings.actions))

    @property
    def healthy(self) -> bool:
        """Every part alive and making progress (what earns ``WATCHDOG=1``)."""
        dead = self.parts.dead()
        if dead:
            return False
        if not self.bridge.healthy:
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
                log.warning("unhealthy", dead=self.parts.dead(), bridge=self.bridge.healthy)
            since_state += tick
            if since_state >= STATE_EVERY_S:
                since_state = 0.0
                self.state_outlet.publish()

    async def _shutdown(self) -> None:
        log.info("stopping")
        self.parts.stopping()  # the worker ends first, on purpose: not a crash to restart
        self.notifier.stopping()
        if self.apis is not None:
            await self.apis.close()
        await self.dispatcher.drain(FINISH_ON_STOP_S)
        self.desk.close()  # the questions still waiting end in a record
        await self.worker.stop()
        await self.parts.stop()
        await self.bridge.close()
        if self.dispatcher.knowledge is not None:
            self.dispatcher.knowledge.close()
        if isinstance(self.remote, OpenAIGenerator):
            await self.remote.close()
        self.journal.close()
        if self.gpio is not None:
            self.gpio.close()
        if self.voice is not None:
            self.voice.close()
        log.info("stopped")


def run(settings: Settings, config_path: Path | None) -> int:
    """Run the supervisor in a fresh event loop."""
    async def main() -> int:
        return await Supervisor(settings, config_path).run()

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main())
    return 130

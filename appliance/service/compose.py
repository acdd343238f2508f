"""The composition root: every part of a running appliance, built in one place.

:func:`compose` builds each part once, in dependency order, and hands it its
collaborators as constructor arguments; an optional part is ``None``. Nothing
is started here and nothing is assigned to a part afterwards: starting,
watching and stopping them is :class:`~appliance.service.supervisor.Supervisor`'s
job. The one cycle (the bridge feeds the intake, which answers through the
bridge) is broken by the :class:`~appliance.service.inbox.Inbox`, built first.
See docs/architecture.md for the picture.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.actions.world import WorldState
from appliance.config import Settings
from appliance.config.schema import ThermalLevel
from appliance.config.secrets import read_api_key
from appliance.generate.base import Generator
from appliance.generate.local import ModelWorker
from appliance.generate.mqtt_remote import MqttGenerator
from appliance.hardware import parallel_sequences
from appliance.logs import get_logger
from appliance.mqtt.bridge import Bridge
from appliance.mqtt.contract import Topics
from appliance.mqtt.discovery import discovery_message
from appliance.power.monitor import PowerMonitor
from appliance.protocol.messages import error_message
from appliance.rules import RuleSet
from appliance.service.action_desk import ActionDesk, command_topics
from appliance.service.conversations import Conversations
from appliance.service.dispatcher import Dispatcher
from appliance.service.inbox import Inbox
from appliance.service.intake import Intake, Route, listen_topics
from appliance.service.journal import Journal
from appliance.service.router import Router
from appliance.service.state_outlet import StateOutlet
from appliance.service.status import Status
from appliance.thermal import ThermalWatchdog

if TYPE_CHECKING:
    from gpiozero.pins import Factory

    from appliance.api import Apis
    from appliance.gpio import GpioDevices
    from appliance.service.knowledge_context import KnowledgeContext
    from appliance.voice.controller import VoiceController

log = get_logger("supervisor")  # its lines, as they were before the root moved here


@dataclass(frozen=True)
class Service:
    """The parts of one appliance, built and wired, none started."""

    topics: Topics
    status: Status
    journal: Journal
    world: WorldState
    worker: ModelWorker
    remote: Generator | None
    router: Router
    knowledge: KnowledgeContext | None
    inbox: Inbox
    bridge: Bridge
    gpio: GpioDevices | None
    desk: ActionDesk
    power: PowerMonitor
    voice: VoiceController | None
    dispatcher: Dispatcher
    intake: Intake
    state_outlet: StateOutlet
    watchdog: ThermalWatchdog
    apis: Apis | None

    def parts(self) -> list[object]:
        """Every part, for the test that none is rewired after construction."""
        return [p for p in vars(self).values() if p is not None]


async def compose(settings: Settings, config_path: Path | None, status: Status, *,
                  pin_factory: Factory | None = None) -> Service:
    """Build every part of the appliance configured by ``settings`` (on the running loop).

    Raises :class:`~appliance.service.journal.JournalError` when the journal
    cannot be opened.
    """
    loop = asyncio.get_running_loop()
    topics = Topics.under(settings.base_topic)
    journal = Journal(settings.data_dir / "journal.sqlite3")
    world = WorldState(journal)
    rules = RuleSet(settings.rules, settings.base_topic)
    secrets = [name for name in (settings.mqtt.password_env, settings.escalation.api_key_env)
               if name]
    worker = ModelWorker(config_path, secret_env=secrets,
                         on_change=lambda: _worker_changed(worker, status))
    escalation = settings.escalation
    reply_base = f"{topics.base}/reply"
    remote_topics = (MqttGenerator.reply_topics(escalation.mqtt_topic, reply_base)
                     if escalation.enabled and escalation.mqtt_topic is not None else [])
    inbox = Inbox(loop, listen_topics(settings, topics, rules,
                                      (*remote_topics, *command_topics(topics))))
    gpio = _gpio(settings, inbox, pin_factory)
    bridge = Bridge(settings, journal, inbox.subscriptions, inbox.message, inbox.connected,
                    problem=status.problem)
    remote = _remote(settings, bridge, reply_base)
    router = Router(worker, remote, escalation, settings.thermal.levels,
                    kid_safe=settings.voice.kid_safe,
                    on_change=lambda: _router_changed(router, status))
    knowledge = _knowledge(settings)
    desk = ActionDesk(settings, topics, bridge, world,
                      gpio.set_output if gpio is not None else None)
    power = await PowerMonitor.open(settings.power)
    voice = None
    if settings.voice.enabled:  # vosk and numpy load only on a device that listens
        from appliance.voice.controller import VoiceController

        voice = VoiceController(
            settings, loop, submit=inbox.ask, cancel_running=inbox.cancel_running,
            prefill=inbox.prefill, publish=bridge.publish, facts=status.update,
            on_error=lambda message: _voice_failed(message, status, bridge, topics),
            on_intent=desk.spoken, pin_factory=pin_factory)
    dispatcher = Dispatcher(
        router=router, outlet=bridge, journal=journal, topics=topics, rules=rules,
        status=status, queue_size=settings.mqtt.queue_size,
        stream=settings.mqtt.stream_answers, llm=settings.llm,
        parallel=parallel_sequences(settings.llm.parallel),
        on_alert=gpio.alert if gpio is not None else lambda: None,
        kid_safe=settings.voice.kid_safe, device_id=settings.device_id, speaker=voice,
        knowledge=knowledge, actions=desk.service, world=world, power=power,
        # Toy mode keeps conversations in memory only: nothing a child says is written down.
        conversations=Conversations(settings.conversation,
                                    None if settings.voice.kid_safe else journal,
                                    max_chars=8 * settings.llm.n_ctx))
    if voice is not None:  # an answer that asks something back opens a follow-up window
        dispatcher.answer_listeners.append(voice.answered)
    state_outlet = StateOutlet(status, topics.state, bridge.publish,
                               worker_pid=lambda: worker.pid, power_w=lambda: power.power_w)

    def publish_discovery() -> None:
        discovery = settings.mqtt.discovery
        if discovery.enabled:
            bridge.publish(discovery_message(discovery.prefix, settings.device_id, topics,
                                             settings.actions))

    def on_connected() -> None:
        publish_discovery()
        state_outlet.publish()

    routes: list[Route] = []
    if isinstance(remote, MqttGenerator):
        routes.append((remote.handles, lambda m: remote.on_message(m.topic, m.payload)))
    routes.append((command_topics(topics).__contains__, desk.on_command))
    intake = Intake(settings, topics, rules, dispatcher, bridge, bridge.ack, publish_discovery,
                    status, inbox=inbox, world=world, routes=tuple(routes),
                    forward=bridge.forward, on_connected=on_connected)

    def show_state() -> None:
        if gpio is not None:
            gpio.show_state(status.state, voice is not None and voice.failed)

    status.listeners += [state_outlet.schedule, show_state]

    def on_level(level: ThermalLevel) -> None:
        budget = level.budget(settings.llm.max_tokens)
        router.set_budget(budget)
        worker.set_thinking(level.thinking)
        worker.set_parallel(level.parallel)
        worker.set_threads(level.n_threads, level.n_threads_batch)
        dispatcher.set_level(level, throttled=watchdog.index > 0)
        status.update(throttle_level=level.name, max_tokens=budget, n_threads=worker.n_threads,
                      threads_reason=worker.threads_reason)

    def on_reading() -> None:
        if gpio is not None:
            gpio.show_level(watchdog.index, watchdog.celsius,
                            sensor_lost=watchdog.sensor_error is not None)
        status.update(temp_c=watchdog.celsius, fan_on=gpio.fan_on if gpio is not None else None)
        status.problem("thermal", watchdog.sensor_error)

    watchdog = ThermalWatchdog(settings.thermal, on_level, on_reading=on_reading)
    apis = None
    api = settings.api
    if api.http is not None or api.wyoming is not None or api.web is not None:
        from appliance.api import Apis  # aiohttp and wyoming load only when asked for
        from appliance.console.parts import ConsoleParts

        console = ConsoleParts(settings, config_path, status, journal, world, desk, knowledge) \
            if api.web is not None else None
        apis = Apis(settings, dispatcher, status, console)
    _router_changed(router, status)
    return Service(topics, status, journal, world, worker, remote, router, knowledge, inbox,
                   bridge, gpio, desk, power, voice, dispatcher, intake, state_outlet,
                   watchdog, apis)


def _gpio(settings: Settings, inbox: Inbox, pin_factory: Factory | None) -> GpioDevices | None:
    """The GPIO devices; their events go straight to the intake, broker or not."""
    if not settings.gpio.enabled:
        log.info("gpio_disabled")
        return None
    from appliance.gpio import GpioDevices, GpioUnavailable  # gpiozero: only when GPIO is on

    try:
        return GpioDevices(settings.gpio, inbox.reading, pin_factory)
    except GpioUnavailable as exc:
        log.warning("running_without_gpio", reason=str(exc))
        return None


def _knowledge(settings: Settings) -> KnowledgeContext | None:
    """The manuals, if they are on (their index and embedder load only then)."""
    if not settings.knowledge.enabled:
        return None
    from appliance.knowledge import index_path
    from appliance.service.knowledge_context import KnowledgeContext

    return KnowledgeContext(settings.knowledge, index_path(settings.data_dir))


def _remote(settings: Settings, bridge: Bridge, reply_base: str) -> Generator | None:
    """The bigger model of ``escalation``, if it is on."""
    escalation = settings.escalation
    if not escalation.enabled:
        return None
    if escalation.mqtt_topic is not None:
        return MqttGenerator(escalation.mqtt_topic, reply_base, bridge.publish,
                             first_token_timeout_s=escalation.first_token_timeout_s,
                             timeout_s=escalation.timeout_s)
    assert escalation.endpoint is not None  # the config checks require one of the two
    from appliance.generate.openai_http import OpenAIGenerator  # httpx: only when used

    return OpenAIGenerator(escalation.endpoint, escalation.model, read_api_key(settings),
                           first_token_timeout_s=escalation.first_token_timeout_s,
                           timeout_s=escalation.timeout_s)


def _worker_changed(worker: ModelWorker, status: Status) -> None:
    down = worker.was_ready and not worker.ready.is_set()
    status.problem("model", (worker.last_error or "the model worker is restarting")
                   if down else None)
    if worker.ready.is_set():
        status.update(model=worker.model, n_threads=worker.n_threads,
                      threads_reason=worker.threads_reason)


def _router_changed(router: Router, status: Status) -> None:
    described = router.describe()
    if described is not None:
        status.update(extra={**status.extra, "escalation": described})


def _voice_failed(message: str, status: Status, bridge: Bridge, topics: Topics) -> None:
    log.error("voice_unavailable", error=message)
    status.problem("voice", message)
    bridge.deliver(None, [error_message(topics.error, "voice", message)])

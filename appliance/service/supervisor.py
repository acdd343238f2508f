"""``appliance run``: the supervisor, a thin wire between the parts.

It starts the model worker (a child process), the MQTT bridge and the
dispatcher on one asyncio loop, keeps systemd informed, publishes the state,
and shuts everything down cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

from gpiozero import Button, GPIOZeroError
from gpiozero.pins import Factory

from appliance.config import Settings
from appliance.config.schema import ThermalLevel
from appliance.gpio import GpioParts, GpioUnavailable
from appliance.hardware import load_average, rss_bytes
from appliance.llm import new_request_id
from appliance.logs import get_logger
from appliance.mqtt.bridge import Bridge, Inbound
from appliance.mqtt.contract import Topics
from appliance.mqtt.discovery import discovery_message
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher, Rejected
from appliance.service.intake import Intake
from appliance.service.journal import Journal
from appliance.service.model_worker import ModelWorker
from appliance.service.notify import Notifier
from appliance.service.requests import Outgoing, Request
from appliance.service.status import Status
from appliance.thermal import ThermalWatchdog
from appliance.voice.activation import Activation, route
from appliance.voice.recognizer import Heard
from appliance.voice.service import Speaker, VoiceInput, source_name

log = get_logger("supervisor")

STATE_EVERY_S = 30.0
FINISH_ON_STOP_S = 4.0
VOLUME_STEP = 0.2


class Supervisor:
    """Owns the parts of one running appliance."""

    def __init__(self, settings: Settings, config_path: Path | None,
                 pin_factory: Factory | None = None) -> None:
        self.settings = settings
        self.pin_factory = pin_factory
        self.gpio: GpioParts | None = None
        voice = settings.voice
        self.activation = Activation(voice.activation, voice.wake_phrase, voice.wake_window_s)
        self.speaker: Speaker | None = None
        self._voice_failed = False
        self.voice_in: VoiceInput | None = None
        self.talk_button: Button | None = None
        self.topics = Topics.under(settings.base_topic)
        self.status = Status(max_tokens=settings.llm.max_tokens)
        self.notifier = Notifier()
        self.journal = Journal(settings.data_dir / "journal.sqlite3")
        self.worker = ModelWorker(config_path)
        self.rules = RuleSet(settings.rules, settings.base_topic)
        self.watchdog = ThermalWatchdog(settings.thermal, self._on_level,
                                        on_reading=self._show_temperature)
        self.stop = asyncio.Event()
        self._state_scheduled = False

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.bridge = bridge = Bridge(self.settings, self.journal, [], self._on_message,
                                      self._on_connected)
        self.dispatcher = Dispatcher(
            worker=self.worker, outlet=bridge, journal=self.journal, topics=self.topics,
            rules=self.rules, status=self.status, queue_size=self.settings.mqtt.queue_size,
            stream=self.settings.mqtt.stream_answers, llm=self.settings.llm,
            on_alert=lambda: self.gpio.alert() if self.gpio else None,
            kid_safe=self.settings.voice.kid_safe)
        self.intake = Intake(self.settings, self.topics, self.rules, self.dispatcher, bridge,
                             bridge.ack, self._publish_discovery)
        bridge.subscriptions = self.intake.subscriptions()
        self.status.listeners.append(self._schedule_state)
        restored = self.dispatcher.restore()
        if restored:
            log.info("restored_requests", count=restored)
        self._start_gpio(loop)
        self.status.listeners.append(self._show_state)
        if self.settings.voice.enabled and self.settings.voice.tts != "none":
            self.speaker = Speaker(
                self.settings, lambda on: loop.call_soon_threadsafe(self._speaking, on),
                lambda message: loop.call_soon_threadsafe(self._on_voice_error, message))
            self.dispatcher.speaker = self.speaker
        if self.settings.voice.enabled:
            self._start_talk_button(loop)
            self.voice_in = VoiceInput(self.settings.voice, loop, self._on_heard,
                                       self._on_voice_error)
            self.voice_in.start()
        self.watchdog.observe()
        tasks = [asyncio.create_task(self.worker.run(), name="worker"),
                 asyncio.create_task(self.watchdog.run(), name="thermal"),
                 asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
                 asyncio.create_task(self._keep_alive(), name="keep-alive")]
        bridge.start()
        self.notifier.status("loading the model and connecting to the broker")
        ready = asyncio.create_task(self._wait_ready())
        await self.stop.wait()
        ready.cancel()
        await self._shutdown(tasks)
        return 0

    def _on_message(self, inbound: Inbound) -> None:
        self.intake(inbound)

    async def _wait_ready(self) -> None:
        await self.worker.ready.wait()
        await self.bridge.connected.wait()
        self.status.update(model=self.worker.model)
        if self.status.state == "starting":
            self.status.update(state=self.dispatcher.idle_state)
        self.notifier.ready(f"ready: {self.worker.model}")
        log.info("ready", model=self.worker.model, base_topic=self.topics.base)

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

    def _start_talk_button(self, loop: asyncio.AbstractEventLoop) -> None:
        """Push-to-talk: pressing interrupts (barge-in) and opens the gate until release."""
        pin = self.settings.voice.button
        if pin is None:
            return
        try:
            button = Button(pin, pin_factory=self.pin_factory)
        except GPIOZeroError as exc:
            log.warning("no_talk_button", reason=str(exc))
            return
        button.when_pressed = lambda: loop.call_soon_threadsafe(self._talk_pressed)
        button.when_released = lambda: loop.call_soon_threadsafe(self.activation.release)
        self.talk_button = button

    def _talk_pressed(self) -> None:
        self._act("stop")
        self.activation.press()

    def _on_heard(self, heard: Heard) -> None:
        voice = self.settings.voice
        private = voice.kid_safe  # toy mode: transcripts never leave the device
        if not heard.final and self.status.state == self.dispatcher.idle_state:
            self.status.update(state="listening")
        elif heard.final and self.status.state == "listening":
            self.status.update(state=self.dispatcher.idle_state)
        if not heard.final:
            if not private:
                self.bridge.publish(Outgoing(self.topics.heard_partial, json.dumps(
                    {"text": heard.text, "source": source_name(voice)},
                    ensure_ascii=False).encode(), qos=0))
            return
        record = json.dumps({"text": heard.text, "ms": heard.ms, "source": source_name(voice)},
                            ensure_ascii=False)
        if not private:
            self.bridge.publish(Outgoing(self.topics.heard, record.encode()))
        if voice.keep_transcripts and not private:
            with (self.settings.data_dir / "transcripts.jsonl").open("a") as kept:
                kept.write(record + "\n")
        action, request = route(self.activation, heard.text, voice.intents)
        if action is not None:
            self._act(action)
        if request is None:
            return
        try:
            self.dispatcher.submit(Request(id=new_request_id(), source="voice", text=request))
        except Rejected as exc:
            log.warning("voice_request_dropped", reason=str(exc))

    def _act(self, action: str) -> None:
        """An intent: act without the model."""
        log.info("intent", action=action)
        if action == "stop":  # barge-in
            if self.speaker is not None:
                self.speaker.stop()
            if self.dispatcher.running is not None:
                self.dispatcher.cancel(self.dispatcher.running.id)
        elif action == "repeat" and self.speaker is not None:
            self.speaker.say(self.speaker.last_answer)
        elif action in ("volume_up", "volume_down") and self.speaker is not None:
            volume = self.speaker.change_volume(VOLUME_STEP if action == "volume_up"
                                                else -VOLUME_STEP)
            log.info("volume", volume=volume)

    def _speaking(self, on: bool) -> None:
        if on:
            self.status.update(state="speaking")
        elif self.status.state == "speaking":
            self.status.update(state="thinking" if self.dispatcher.running
                               else self.dispatcher.idle_state)

    def _show_state(self) -> None:
        if self.gpio is not None:
            self.gpio.show_state(self.status.state, self._voice_failed)

    def _on_voice_error(self, message: str) -> None:
        log.error("voice_unavailable", error=message)
        self._voice_failed = True
        self._show_state()
        self.bridge.publish(Outgoing(self.topics.error, json.dumps(
            {"topic": "voice", "error": message}).encode()))

    def _show_temperature(self) -> None:
        if self.gpio is not None:
            self.gpio.show_level(self.watchdog.index, self.watchdog.celsius)

    def _on_level(self, level: ThermalLevel) -> None:
        budget = level.budget(self.settings.llm.max_tokens)
        self.worker.set_budget(budget)
        self.dispatcher.set_level(level, throttled=self.watchdog.index > 0)
        self.status.update(throttle_level=level.name, max_tokens=budget)

    def _on_connected(self) -> None:
        self._publish_discovery()
        self._publish_state()

    def _publish_discovery(self) -> None:
        discovery = self.settings.mqtt.discovery
        if discovery.enabled:
            self.bridge.publish(discovery_message(discovery.prefix, self.settings.device_id,
                                                  self.topics))

    def _schedule_state(self) -> None:
        """Publish the state once per loop turn however many fields changed in it."""
        if not self._state_scheduled:
            self._state_scheduled = True
            asyncio.get_running_loop().call_soon(self._publish_state)

    def _publish_state(self) -> None:
        self._state_scheduled = False
        self.status.temp_c = self.watchdog.celsius
        worker = self.worker.pid
        self.status.rss_mb = (rss_bytes() + (rss_bytes(worker) if worker else 0)) / (1 << 20)
        self.status.load_1m = load_average()
        self.bridge.publish(Outgoing(self.topics.state, json.dumps(self.status.as_dict())
                                     .encode(), retain=True))

    async def _keep_alive(self) -> None:
        """Ping systemd's watchdog while healthy; publish the state every 30 s."""
        tick = min((self.notifier.watchdog_s or STATE_EVERY_S) / 2, STATE_EVERY_S)
        since_state = 0.0
        while True:
            await asyncio.sleep(tick)
            if self.worker.healthy:
                self.notifier.watchdog()
            since_state += tick
            if since_state >= STATE_EVERY_S:
                since_state = 0.0
                self._publish_state()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        log.info("stopping")
        self.notifier.stopping()
        await self.dispatcher.drain(FINISH_ON_STOP_S)
        await self.worker.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.bridge.close()
        self.journal.close()
        if self.gpio is not None:
            self.gpio.close()
        if self.voice_in is not None:
            self.voice_in.stop()
        if self.talk_button is not None:
            self.talk_button.close()
        if self.speaker is not None:
            self.speaker.close()
        log.info("stopped")


def run(settings: Settings, config_path: Path | None) -> int:
    """Run the supervisor in a fresh event loop."""
    async def main() -> int:
        return await Supervisor(settings, config_path).run()

    return asyncio.run(main())

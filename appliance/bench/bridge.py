"""``appliance bench bridge``: the MQTT bridge's ingest rate and the latency it adds to an ask.

* Ingest: N sensor events (QoS 1) published as fast as one client can, received
  by our bridge (paho thread, hand-over to the loop, validation, rule match,
  manual ack), against a bare paho subscriber on the same broker.
* Latency: round trips of ``<base>/ask`` through ``appliance run`` against
  :meth:`Engine.complete` alone, same model, same questions, greedy.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.bench.broker import LocalBroker, wait_port
from appliance.catalog import ResolvedModel
from appliance.config import Settings, parse_settings
from appliance.llm import ChatRequest, Engine
from appliance.mqtt.bridge import Bridge
from appliance.mqtt.contract import Topics
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher
from appliance.service.intake import Intake
from appliance.service.journal import Journal
from appliance.service.model_worker import ModelWorker
from appliance.service.status import Status

QUESTIONS = ("What is two plus two?", "Name a colour.", "Why is the sky blue?",
             "Say hello.", "What day comes after Monday?")


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _publish_events(port: int, topic: str, count: int) -> float:
    """Publish ``count`` events at QoS 1 from a fresh client; returns when it started."""
    client = _client(port, "bench-publisher")
    payload = json.dumps({"temperature": 21.5, "humidity": 40}).encode()
    started = time.perf_counter()
    infos = [client.publish(topic, payload, qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return started


def _bare_ingest(port: int, topic: str, count: int) -> float:
    """Events/s that a bare paho subscriber receives."""
    received = threading.Event()
    seen = [0]
    done_at = [0.0]

    def on_message(*_: object) -> None:
        seen[0] += 1
        if seen[0] == count:
            done_at[0] = time.perf_counter()
            received.set()

    sub = _client(port, "bench-bare")
    sub.on_message = on_message
    sub.subscribe(topic, qos=1)
    time.sleep(0.3)
    started = _publish_events(port, topic, count)
    if not received.wait(60):
        raise RuntimeError(f"bare subscriber got {seen[0]} of {count} events")
    sub.disconnect()
    sub.loop_stop()
    return count / (done_at[0] - started)


async def _our_ingest(settings: Settings, workdir: Path, count: int) -> tuple[float, int]:
    """Events/s through our bridge and intake with the model idle; and how many errors."""
    topics = Topics.under(settings.base_topic)
    journal = Journal(workdir / "ingest.sqlite3")
    rules = RuleSet(settings.rules, settings.base_topic)
    errors = [0]
    holder: dict[str, Intake] = {}
    bridge = Bridge(settings, journal, [topics.events], lambda m: holder["i"](m))
    dispatcher = Dispatcher(worker=ModelWorker(None), outlet=bridge, journal=journal,
                            topics=topics, rules=rules, status=Status(), queue_size=8,
                            stream=False)
    intake = Intake(settings, topics, rules, dispatcher, bridge, bridge.ack, lambda: None)
    original_error = intake._error

    def count_error(topic: str, message: str, request_id: str | None) -> None:
        errors[0] += 1
        original_error(topic, message, request_id)

    intake._error = count_error  # type: ignore[method-assign]
    holder["i"] = intake
    bridge.start()
    await bridge.connected.wait()
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    publisher = loop.run_in_executor(None, _publish_events, settings.mqtt.port,
                                     topics.event("bench"), count)
    while bridge.received < count:
        await asyncio.sleep(0.001)
    finished = time.perf_counter()
    started = await publisher
    await bridge.close()
    journal.close()
    return count / (finished - started), errors[0]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class BridgeBench:
    """The figures of one run."""

    ours_events_per_s: float
    bare_events_per_s: float
    events: int
    ingest_errors: int
    engine_p50_ms: float
    engine_p95_ms: float
    mqtt_p50_ms: float
    mqtt_p95_ms: float

    @property
    def added_p50_ms(self) -> float:
        """What the bridge adds to the engine's own time, at the median."""
        return self.mqtt_p50_ms - self.engine_p50_ms

    @property
    def added_p95_ms(self) -> float:
        """The same at the 95th percentile."""
        return self.mqtt_p95_ms - self.engine_p95_ms


def _ask_roundtrips(port: int, base: str, rounds: int, max_tokens: int) -> list[float]:
    answers: dict[str, threading.Event] = {}
    peer = _client(port, "bench-asker")
    peer.on_message = lambda _c, _u, m: answers[json.loads(m.payload)["id"]].set()
    peer.subscribe(f"{base}/answer", qos=1)
    time.sleep(0.3)
    times = []
    for i in range(rounds * len(QUESTIONS)):
        request_id = f"b{i}"
        answers[request_id] = threading.Event()
        text = QUESTIONS[i % len(QUESTIONS)]
        started = time.perf_counter()
        peer.publish(f"{base}/ask", json.dumps({"id": request_id, "text": text,
                                                "max_tokens": max_tokens}), qos=1)
        if not answers[request_id].wait(120):
            raise RuntimeError(f"no answer to {request_id}")
        times.append((time.perf_counter() - started) * 1000)
    peer.disconnect()
    peer.loop_stop()
    return times


def run_bridge_bench(settings: Settings, model: ResolvedModel, events: int = 20000,
                     rounds: int = 4, max_tokens: int = 16) -> BridgeBench:
    """Measure everything on a private mosquitto; the model comes from ``settings``."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        try:
            config = work / "config.yaml"
            config.write_text(
                f"device_id: bench\ndata_dir: {work / 'data'}\n"
                f"llm:\n  model_path: {model.path}\n  temperature: 0\n"
                f"  n_ctx: {settings.llm.n_ctx}\n"
                + (f"  n_threads: {settings.llm.n_threads}\n" if settings.llm.n_threads else "")
                + f"mqtt:\n  port: {broker.port}\n  discovery: {{enabled: false}}\n"
                f"thermal:\n  zone_path: {settings.thermal.zone_path}\n"
                "rules:\n  - {name: bench, source: bench, when: temperature > 1000, "
                "prompt: 'It is {temperature} degrees.'}\n")
            bench_settings = parse_settings(config.read_text(), str(config))
            topic = Topics.under(bench_settings.base_topic).event("bare")
            bare = _bare_ingest(broker.port, topic, events)
            ours, errors = asyncio.run(_our_ingest(bench_settings, work, events))

            engine = Engine(bench_settings.llm, model)
            engine.warm_up()
            alone = []
            for i in range(rounds * len(QUESTIONS)):
                started = time.perf_counter()
                engine.complete(ChatRequest(QUESTIONS[i % len(QUESTIONS)],
                                            max_tokens=max_tokens))
                alone.append((time.perf_counter() - started) * 1000)
            engine.close()

            proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "--config", str(config), "run"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(broker.port)
                _ask_roundtrips(broker.port, bench_settings.base_topic, 1, max_tokens)  # warm
                via_mqtt = _ask_roundtrips(broker.port, bench_settings.base_topic, rounds,
                                           max_tokens)
            finally:
                proc.terminate()
                proc.wait(15)
        finally:
            broker.stop()
    return BridgeBench(
        ours_events_per_s=ours, bare_events_per_s=bare, events=events, ingest_errors=errors,
        engine_p50_ms=statistics.median(alone), engine_p95_ms=_percentile(alone, 0.95),
        mqtt_p50_ms=statistics.median(via_mqtt), mqtt_p95_ms=_percentile(via_mqtt, 0.95))

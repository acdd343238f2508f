"""``appliance bench bridge``: the MQTT bridge's ingest rate and the latency it adds to an ask.

* Ingest: N sensor events (QoS 1) published as fast as one client can, received
  by our bridge (paho thread, hand-over to the loop, validation, rule match,
  manual ack), against a bare paho subscriber on the same broker.
* Latency: round trips of ``<base>/ask`` through ``appliance run``, interleaved
  with :meth:`Engine.complete` alone (same model, questions, greedy). What the
  bridge adds is each round trip less that generation's own ``total_ms``; the
  fsync share is what the ``synchronous=FULL`` commit before each acknowledgement
  costs on this data_dir's disk (the same commit timed without fsync, subtracted).
* Fuzz: hostile payloads against the same ``appliance run`` (one error each, valid
  asks interleaved), their rate and the supervisor's RSS growth.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.bench.broker import LocalBroker
from appliance.bench.fuzz import FuzzResult, run_fuzz
from appliance.catalog import ResolvedModel
from appliance.config import Settings, parse_settings
from appliance.generate.local import ModelWorker
from appliance.hardware import rss_bytes
from appliance.llm import ChatRequest, Engine
from appliance.mqtt.bridge import Bridge
from appliance.mqtt.contract import Topics
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher
from appliance.service.intake import Intake
from appliance.service.journal import Journal
from appliance.service.router import Router
from appliance.service.status import Status

FUZZ_TOPIC = "site/bench"
QUESTIONS = ("What is two plus two?", "Name a colour.", "Why is the sky blue?",
             "Say hello.", "What day comes after Monday?")


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _publish_events(port: int, topic: str, count: int) -> float:
    """Publish ``count`` events at QoS 1 with ``mosquitto_pub -l``; returns when it started.

    A C publisher, so that the publisher is not what limits the rate measured.
    """
    line = json.dumps({"temperature": 21.5, "humidity": 40}) + "\n"
    started = time.perf_counter()
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                    "-t", topic, "-l"], input=(line * count).encode(), check=True)
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
    dispatcher = Dispatcher(router=Router(ModelWorker(None)), outlet=bridge, journal=journal,
                            topics=topics, rules=rules, status=Status(), queue_size=8,
                            stream=False, llm=settings.llm)
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
    mqtt_p50_ms: float
    added_p50_ms: float
    added_p95_ms: float
    fsync_ms: float
    fuzz: FuzzResult
    fuzz_rss_growth_mb: float
    fuzz_again_rss_growth_mb: float
    """RSS growth over a second run of as many payloads: a leak grows both runs alike,
    while buffers that a burst needs once are paid for in the first."""

    @property
    def ingest_ratio(self) -> float:
        """Our ingest rate as a share of the bare subscriber's."""
        return self.ours_events_per_s / self.bare_events_per_s


def _fsync_cost_ms(directory: Path, commits: int = 200) -> float:
    """What ``synchronous=FULL`` adds to one journaled question's commit on this disk, in ms."""
    cost = {}
    for mode in ("FULL", "OFF"):
        db = sqlite3.connect(directory / f"fsync-{mode}.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={mode}")
        db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, text TEXT)")
        started = time.perf_counter()
        for i in range(commits):
            db.execute("INSERT INTO t VALUES (?, ?)", (f"q{i}", "What is two plus two?"))
        cost[mode] = (time.perf_counter() - started) * 1000 / commits
        db.close()
    return max(0.0, cost["FULL"] - cost["OFF"])


class _Asker:
    """A paho peer that asks ``appliance run`` and times the answers."""

    def __init__(self, port: int, base: str) -> None:
        self.base = base
        self.answers: dict[str, dict[str, object]] = {}
        self.arrived: dict[str, threading.Event] = {}
        self.online = threading.Event()
        self.client = _client(port, "bench-asker")
        self.client.on_message = self._on_message
        self.client.subscribe([(f"{base}/answer", 1), (f"{base}/status", 1),
                               (f"{base}/error", 1)])
        if not self.online.wait(60):
            raise RuntimeError("the appliance did not come online")

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        if m.topic.endswith("/status"):
            if m.payload == b"online":
                self.online.set()
            return
        body = json.loads(m.payload)
        request_id = str(body.get("id", ""))
        self.answers[request_id] = body
        if request_id in self.arrived:
            self.arrived[request_id].set()

    def ask(self, request_id: str, text: str, max_tokens: int) -> tuple[float, float]:
        """Round trip in ms, and the generation's own ``total_ms`` from the answer."""
        self.arrived[request_id] = threading.Event()
        started = time.perf_counter()
        self.client.publish(f"{self.base}/ask", json.dumps(
            {"id": request_id, "text": text, "max_tokens": max_tokens}), qos=1)
        if not self.arrived[request_id].wait(60):
            raise RuntimeError(f"no answer to {request_id}")
        roundtrip = (time.perf_counter() - started) * 1000
        body = self.answers[request_id]
        if "total_ms" not in body:
            raise RuntimeError(f"{request_id} was refused: {body}")
        return roundtrip, float(body["total_ms"])  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_bridge_bench(settings: Settings, model: ResolvedModel, events: int = 20000,
                     rounds: int = 4, max_tokens: int = 16, fuzz: int = 10000,
                     ) -> BridgeBench:
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
                "  ask_rate_per_min: 100000\n  queue_size: 1000\n"
                f"thermal:\n  zone_path: {settings.thermal.zone_path}\n"
                "rules:\n  - {name: bench, source: bench, when: temperature > 1000, "
                "prompt: 'It is {temperature} degrees.'}\n"
                f"  - {{name: fuzz, source: {FUZZ_TOPIC}, when: temperature > 1000, "
                "prompt: 'It is {temperature} degrees.'}\n")
            bench_settings = parse_settings(config.read_text(), str(config))
            topic = Topics.under(bench_settings.base_topic).event("bare")
            bares, ourses, errors = [], [], 0
            for i in range(3):  # alternated, so that the machine's drift hits both
                bares.append(_bare_ingest(broker.port, topic, events))
                ingest = replace(bench_settings, mqtt=replace(
                    bench_settings.mqtt, client_id=f"bench-ingest-{i}"))
                (work / f"ingest-{i}").mkdir()
                rate, failed = asyncio.run(_our_ingest(ingest, work / f"ingest-{i}", events))
                ourses.append(rate)
                errors += failed
            bare, ours = statistics.median(bares), statistics.median(ourses)
            fsync_ms = _fsync_cost_ms(work)

            engine = Engine(bench_settings.llm, model)
            engine.warm_up()
            proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "--config", str(config), "run"],
                stdout=subprocess.DEVNULL, stderr=(work / "run.log").open("wb"))
            alone: list[float] = []
            via_mqtt: list[float] = []
            added: list[float] = []
            try:
                asker = _Asker(broker.port, bench_settings.base_topic)
                asker.ask("warm", QUESTIONS[0], max_tokens)
                for i in range(rounds * len(QUESTIONS)):  # interleaved, so drift hits both
                    question = QUESTIONS[i % len(QUESTIONS)]
                    started = time.perf_counter()
                    engine.complete(ChatRequest(question, max_tokens=max_tokens))
                    alone.append((time.perf_counter() - started) * 1000)
                    time.sleep(0.05)  # let llama.cpp's spinning threads settle
                    roundtrip, generation = asker.ask(f"b{i}", question, max_tokens)
                    via_mqtt.append(roundtrip)
                    added.append(roundtrip - generation)
                    time.sleep(0.05)
                asker.close()
                rss_before = rss_bytes(proc.pid)
                fuzzed = run_fuzz(broker.port, bench_settings.base_topic, FUZZ_TOPIC, fuzz)
                rss_after = rss_bytes(proc.pid)
                run_fuzz(broker.port, bench_settings.base_topic, FUZZ_TOPIC, fuzz)
                rss_growth = (rss_after - rss_before) / (1 << 20)
                rss_again = (rss_bytes(proc.pid) - rss_after) / (1 << 20)
            except RuntimeError as exc:
                log = (work / "run.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{exc}; appliance run said:\n{log}") from exc
            finally:
                engine.close()
                proc.terminate()
                proc.wait(15)
        finally:
            broker.stop()
    return BridgeBench(
        ours_events_per_s=ours, bare_events_per_s=bare, events=events, ingest_errors=errors,
        engine_p50_ms=statistics.median(alone), mqtt_p50_ms=statistics.median(via_mqtt),
        added_p50_ms=statistics.median(added), added_p95_ms=_percentile(added, 0.95),
        fsync_ms=fsync_ms, fuzz=fuzzed, fuzz_rss_growth_mb=rss_growth,
        fuzz_again_rss_growth_mb=rss_again)

"""``appliance bench fuzz``: ten thousand hostile inputs over MQTT, HTTP and Wyoming.

One private ``appliance run`` (:class:`~appliance.bench.private_run.PrivateAppliance`)
takes the MQTT fuzz of :mod:`appliance.bench.fuzz` (a third of the cases) and
then the HTTP and Wyoming fuzz of :mod:`appliance.bench.fuzz_servers` (the
rest). The service's memory (the app and its model worker) is taken around
each part; every valid request between the hostile ones must be answered.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.bench.fuzz import FuzzResult, run_fuzz
from appliance.bench.fuzz_servers import ServerFuzzResult, run_server_fuzz
from appliance.bench.private_run import PrivateAppliance

RULE_TOPIC = "zigbee2mqtt/fuzz"
RULES = (f"rules:\n  - name: outside\n    source: {RULE_TOPIC}\n    when: temperature > 1000\n"
         "    prompt: It is {temperature} degrees.\n")


@dataclass(frozen=True)
class FuzzBench:
    """The figures of one run."""

    mqtt: FuzzResult
    mqtt_rss_growth: int
    servers: ServerFuzzResult
    seconds: float
    alive: bool


def run_fuzz_bench(model: Path, speech: Path | None, count: int, *, seed: int = 7,
                   concurrency: int = 8) -> FuzzBench:
    """Fuzz a private ``appliance run`` on ``model`` with ``count`` cases in all."""
    mqtt_count = count // 3
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="appliance-fuzz-") as tmp, PrivateAppliance(
            Path(tmp), model, speech, RULES) as app:
        before = app.rss()
        mqtt = run_fuzz(app.broker.port, app.base, RULE_TOPIC, mqtt_count)
        mqtt_growth = app.rss() - before
        servers = asyncio.run(run_server_fuzz(
            app.http_port, app.wyoming_port, model.stem, count - mqtt_count, app.rss,
            asr=speech is not None, tts=True, seed=seed, concurrency=concurrency))
        alive = app.proc is not None and app.proc.poll() is None
    return FuzzBench(mqtt, mqtt_growth, servers, time.monotonic() - started, alive)

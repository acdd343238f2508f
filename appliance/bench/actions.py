"""``appliance bench actions``: the cost of deciding with a grammar, and of acting.

* Grammar: tokens/s of grammar-constrained decisions against the same prompts
  unconstrained, in one run.
* Decision latency: the whole grammar-constrained decision with the tool list's
  KV state cached (the system prefix) against evaluated every time.
* Fast path: an action phrase published on ``<base>/ask`` to the action's own
  message received by a peer, through ``appliance run`` and a private mosquitto.
* Decided right: the share of a built-in set of 30 commands (each with its
  expected action or "answer") that the configured model decides right. No
  target for the 135M test model; it is the number to check with the 3B one.
"""

from __future__ import annotations

import dataclasses
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

from appliance.actions.decision import parse_decision
from appliance.actions.registry import Registry
from appliance.bench.broker import LocalBroker, tcp_nodelay
from appliance.catalog import ResolvedModel
from appliance.config import parse_settings
from appliance.config.schema import LlmSettings
from appliance.llm import ChatRequest, Engine

ACTIONS_YAML = """actions:
  - name: fan_on
    description: Turn the greenhouse fan on
    phrases: [turn on the fan]
    publish: {topic: bench/fan/set, payload: {state: "ON"}}
  - name: fan_off
    description: Turn the greenhouse fan off
    publish: {topic: bench/fan/set, payload: {state: "OFF"}}
  - name: vent_open
    description: Open the roof vent to a percentage
    publish: {topic: bench/vent/set, payload: {position: "{args.percent}"}}
    args: {percent: {type: integer, minimum: 10, maximum: 100}}
  - name: lights_on
    description: Switch the grow lights on
    publish: {topic: bench/lights/set, payload: {state: "ON"}}
  - name: water
    description: Water the plants for some minutes
    publish: {topic: bench/pump/set, payload: {minutes: "{args.minutes}"}}
    args: {minutes: {type: integer, minimum: 1, maximum: 30}}
"""

COMMANDS: tuple[tuple[str, str], ...] = (
    ("Turn on the fan.", "fan_on"), ("Please switch the fan on.", "fan_on"),
    ("Start the ventilation fan.", "fan_on"), ("It is too hot, run the fan.", "fan_on"),
    ("Fan on, please.", "fan_on"), ("Turn off the fan.", "fan_off"),
    ("Stop the fan.", "fan_off"), ("The fan is too loud, switch it off.", "fan_off"),
    ("Open the vent to 50 percent.", "vent_open"), ("Open the roof vent fully.", "vent_open"),
    ("Crack the vent open a little.", "vent_open"), ("Vent to 30 percent.", "vent_open"),
    ("Switch on the grow lights.", "lights_on"), ("Lights on.", "lights_on"),
    ("It is dark, turn on the lights.", "lights_on"), ("Water the plants.", "water"),
    ("Water for ten minutes.", "water"), ("The soil is dry, water it.", "water"),
    ("Run the irrigation for 5 minutes.", "water"), ("Give the tomatoes some water.", "water"),
    ("What is the capital of France?", "answer"), ("How are you today?", "answer"),
    ("Tell me a joke.", "answer"), ("What does a greenhouse do?", "answer"),
    ("Why do plants need light?", "answer"), ("How many days are in a week?", "answer"),
    ("Who are you?", "answer"), ("What is two plus two?", "answer"),
    ("Name a vegetable.", "answer"), ("Thank you!", "answer"),
)


@dataclass(frozen=True)
class ActionsBench:
    """The figures of one run."""

    grammar_tps: float
    free_tps: float
    decision_cached_ms: float
    decision_uncached_ms: float
    fast_path_p50_ms: float
    fast_path_p95_ms: float
    decided_right: int
    commands: int

    @property
    def grammar_ratio(self) -> float:
        """Grammar-constrained tokens/s as a share of unconstrained."""
        return self.grammar_tps / self.free_tps


def _decisions(engine: Engine, registry: Registry, system: str,
               rounds: int) -> tuple[float, float, float, int]:
    names = list(registry.actions)
    schema = registry.decision_schema(names)
    tools = f"{system}\n\n{registry.tool_list(names)}"
    grammar, free, times = [], [], []
    right = 0
    for i, (command, expected) in enumerate(COMMANDS):
        started = time.perf_counter()
        decided = engine.complete(ChatRequest(command, max_tokens=48, json_schema=schema,
                                              system_prompt=tools))
        times.append((time.perf_counter() - started) * 1000)
        decision = parse_decision(decided.text)
        right += (decision.action or "answer") == expected
        if i < rounds * 4:
            grammar.append(decided.tokens_per_s)
            free.append(engine.complete(ChatRequest(command, max_tokens=decided.tokens,
                                                    system_prompt=tools)).tokens_per_s)
    return statistics.median(grammar), statistics.median(free), statistics.median(times), right


def _uncached_decision_ms(model: ResolvedModel, registry: Registry, system: str) -> float:
    settings = LlmSettings(model_path=model.path, temperature=0.0, prefix_cache_entries=0)
    engine = Engine(settings, model)
    names = list(registry.actions)
    try:
        times = []
        for command, _ in COMMANDS[:8]:
            started = time.perf_counter()
            engine.llama.reset()  # nothing of the last question's prompt is reused either
            engine.complete(ChatRequest(command, max_tokens=48,
                                        json_schema=registry.decision_schema(names),
                                        system_prompt=f"{system}\n\n{registry.tool_list(names)}"))
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        engine.close()


def _fast_path(model: ResolvedModel, asks: int) -> list[float]:
    """Phrase in, action out (ms), through ``appliance run``."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        config = work / "config.yaml"
        config.write_text(
            f"device_id: bench\ndata_dir: {work / 'data'}\nllm:\n  model_path: {model.path}\n"
            f"mqtt:\n  port: {broker.port}\n  discovery: {{enabled: false}}\n"
            f"  ask_rate_per_min: 100000\nthermal:\n  zone_path: {work / 'none'}\n"
            + ACTIONS_YAML)
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(config),
                                 "run"], stdout=subprocess.DEVNULL,
                                stderr=(work / "run.log").open("wb"))
        arrived = threading.Event()
        online = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                             client_id="bench-actions")

        def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
            (online if m.topic.endswith("/status") and m.payload == b"online"
             else arrived).set()

        client.on_message = on_message
        client.connect("127.0.0.1", broker.port)
        tcp_nodelay(client)
        client.loop_start()
        client.subscribe([("bench/fan/set", 1), ("appliance/bench/status", 1)])
        try:
            if not online.wait(120):
                raise RuntimeError("the appliance did not come online")
            times = []
            for i in range(asks + 1):
                arrived.clear()
                started = time.perf_counter()
                client.publish("appliance/bench/ask", json.dumps(
                    {"id": f"f{i}", "text": "turn on the fan"}), qos=1)
                if not arrived.wait(10):
                    raise RuntimeError("the action never arrived")
                if i:  # the first warms the connection up
                    times.append((time.perf_counter() - started) * 1000)
            return times
        finally:
            client.disconnect()
            client.loop_stop()
            proc.terminate()
            proc.wait(20)
            broker.stop()


def run_actions_bench(model: ResolvedModel, rounds: int = 3, asks: int = 30) -> ActionsBench:
    """Everything against ``model``, greedy."""
    registry = Registry(parse_settings(ACTIONS_YAML).actions)
    settings = LlmSettings(model_path=model.path, temperature=0.0)
    engine = Engine(settings, model)
    try:
        grammar, free, cached_ms, right = _decisions(engine, registry,
                                                     settings.system_prompt, rounds)
    finally:
        engine.close()
    uncached_ms = _uncached_decision_ms(model, registry, settings.system_prompt)
    fast = sorted(_fast_path(model, asks))
    return ActionsBench(grammar_tps=grammar, free_tps=free, decision_cached_ms=cached_ms,
                        decision_uncached_ms=uncached_ms,
                        fast_path_p50_ms=statistics.median(fast),
                        fast_path_p95_ms=fast[min(len(fast) - 1, round(0.95 * (len(fast) - 1)))],
                        decided_right=right, commands=len(COMMANDS))


def report(r: ActionsBench) -> list[str]:
    """The figures, one line each."""
    return [
        f"grammar   {r.grammar_tps:6.1f} tok/s constrained against {r.free_tps:6.1f} "
        f"unconstrained = {r.grammar_ratio:6.1%}  (target >= 85%)",
        f"decision  p50 {r.decision_cached_ms:7.1f} ms with the tool list's state cached, "
        f"{r.decision_uncached_ms:7.1f} ms evaluated each time = "
        f"{r.decision_cached_ms / r.decision_uncached_ms:6.1%}",
        f"fast path phrase in to action out: p50 {r.fast_path_p50_ms:5.1f} ms, p95 "
        f"{r.fast_path_p95_ms:5.1f} ms  (target p50 < 50 ms)",
        f"decided right {r.decided_right} of {r.commands} commands "
        f"({r.decided_right / r.commands:.0%}; no target for the test model)",
    ]


def as_json(r: ActionsBench) -> str:
    """The figures as one JSON object."""
    return json.dumps({**dataclasses.asdict(r), "grammar_ratio": r.grammar_ratio})

"""``appliance bench escalation``: what the appliance adds to a remote answer, and fleets.

* Remote: the same OpenAI-compatible server (``python -m llama_cpp.server`` on
  the configured model, standing in for a site's GPU box) asked directly with
  httpx, and through ``appliance run`` with ``tier: remote`` over MQTT,
  interleaved. Time to first token and total time are taken by the client in
  both cases, so what remains is what the appliance adds.
* Confidence: local tokens/s with the first 8 tokens' log-probabilities
  watched, against the same answers unwatched.
* Fleet: three ``appliance run`` on one mosquitto; site asks while one of them
  is busy with a long answer, with and without handing on when busy.
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.bench.broker import LocalBroker, free_port, tcp_nodelay, wait_port
from appliance.catalog import ResolvedModel
from appliance.config.schema import DEFAULT_SYSTEM_PROMPT, LlmSettings
from appliance.llm import ChatRequest, Engine
from appliance.llm.types import Confidence

QUESTIONS = ("Name a colour.", "What is two plus two?", "Say hello.", "Name a fruit.",
             "Name an animal.")
"""An odd number of them, so that the two paths, asking in turn, each ask every one."""
ALIAS = "bench-remote"
SITE = "site/bench"


@dataclass(frozen=True)
class EscalationBench:
    """The figures of one run."""

    direct_ttft_ms: float
    appliance_ttft_ms: float
    direct_total_ms: float
    appliance_total_ms: float
    watched_tps: float
    unwatched_tps: float
    spread_handing_on: dict[str, int]
    spread_round_robin: dict[str, int]
    wait_handing_on_ms: float
    wait_round_robin_ms: float

    @property
    def added_ttft_ms(self) -> float:
        """What the appliance adds to the time to first token, p50."""
        return self.appliance_ttft_ms - self.direct_ttft_ms


def _server(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--seed", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_port(port, 60)
    return proc, f"http://127.0.0.1:{port}/v1"


async def _direct(client: httpx.AsyncClient, endpoint: str, question: str,
                  max_tokens: int) -> tuple[float, float]:
    """TTFT and total (ms) of one streamed answer, straight from the server.

    The same client library and messages as the appliance uses: httpx's async
    client, its system prompt and the question.
    """
    started = time.perf_counter()
    first = None
    body = {"model": ALIAS, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                         {"role": "user", "content": question}]}
    async with client.stream("POST", f"{endpoint}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content"' in line and first is None:
                first = time.perf_counter()
    done = time.perf_counter()
    return ((first or done) - started) * 1000, (done - started) * 1000


async def _compare(endpoint: str, asker: _Asker, rounds: int,
                   max_tokens: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Direct and through-the-appliance answers to the same questions, interleaved.

    The server keeps the last prompt's state, so no request asks the question of
    the one before it (direct, then through, then direct... go down the list in
    turn): each path then reuses only the system prompt, alike.
    """
    direct, through = [], []
    n = len(QUESTIONS)
    async with httpx.AsyncClient(timeout=60) as client:
        await _direct(client, endpoint, QUESTIONS[-1], 2)
        for i in range(rounds * n):
            direct.append(await _direct(client, endpoint, QUESTIONS[2 * i % n], max_tokens))
            through.append(await asyncio.to_thread(asker.ask, "appliance/esc/ask", f"r{i}",
                                                   QUESTIONS[(2 * i + 1) % n], max_tokens,
                                                   "remote"))
    return direct, through


class _Asker:
    """Asks ``appliance run`` over MQTT and times first chunk and answer."""

    def __init__(self, port: int, base: str) -> None:
        self.base = base
        self.first: dict[str, float] = {}
        self.done: dict[str, threading.Event] = {}
        self.answers: dict[str, dict[str, object]] = {}
        self.online: set[str] = set()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"bench-esc-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        tcp_nodelay(self.client)
        self.client.loop_start()
        self.client.subscribe([(f"{base}/answer", 1), (f"{base}/answer/stream", 1),
                               (f"{SITE}/answer", 1), ("appliance/+/status", 1)])

    def wait_online(self, base: str, timeout: float = 120) -> None:
        """Wait until the appliance under ``base`` says ``online`` (it is subscribed then)."""
        deadline = time.monotonic() + timeout
        while base not in self.online:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base} did not come online")
            time.sleep(0.05)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        if m.topic.endswith("/status"):
            if m.payload == b"online":
                self.online.add(m.topic.removesuffix("/status"))
            return
        body = json.loads(m.payload)
        request_id = str(body.get("id"))
        if m.topic.endswith("/stream"):
            self.first.setdefault(request_id, time.perf_counter())
        else:
            self.answers[request_id] = body
            if request_id in self.done:
                self.done[request_id].set()

    def ask(self, topic: str, request_id: str, text: str, max_tokens: int,
            tier: str = "auto") -> tuple[float, float]:
        self.done[request_id] = threading.Event()
        started = time.perf_counter()
        self.client.publish(topic, json.dumps({"id": request_id, "text": text,
                                               "max_tokens": max_tokens, "tier": tier}), qos=1)
        if not self.done[request_id].wait(120):
            raise RuntimeError(f"no answer to {request_id}")
        done = time.perf_counter()
        return (self.first.get(request_id, done) - started) * 1000, (done - started) * 1000

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _config(work: Path, name: str, model: Path, port: int, extra: str) -> Path:
    home = work / name
    home.mkdir()
    config = home / "config.yaml"
    config.write_text(
        f"device_id: {name}\ndata_dir: {home / 'data'}\n"
        f"llm:\n  model_path: {model}\n  temperature: 0\n  n_ctx: 1024\n  max_tokens: 600\n"
        f"mqtt:\n  port: {port}\n  discovery: {{enabled: false}}\n  ask_rate_per_min: 100000\n"
        f"thermal:\n  zone_path: {home / 'none'}\n" + extra)
    return config


def _run(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(config), "run"],
                            stdout=subprocess.DEVNULL,
                            stderr=(config.parent / "run.log").open("wb"))


def _spread(work: Path, model: Path, port: int, take_below: int,
            asks: int) -> tuple[dict[str, int], float]:
    """Who answered each site ask while device 0 was busy, and when the last came (ms)."""
    # A group of its own: mosquitto keeps dealing shares to the stopped members of another.
    extra = f"fleet:\n  group: g{take_below}\n  topic: {SITE}\n  take_below: {take_below}\n"
    names = [f"f{take_below}-{i}" for i in range(3)]
    procs = [_run(_config(work, name, model, port, extra)) for name in names]
    asker = _Asker(port, f"appliance/{names[0]}")
    try:
        for name in names:  # every member is up (and subscribed) before the site asks
            asker.client.subscribe(f"appliance/{name}/answer", qos=1)
            asker.wait_online(f"appliance/{name}")
            asker.ask(f"appliance/{name}/ask", f"warm-{name}", "Hi.", 2)
        asker.done["busy"] = threading.Event()
        asker.client.publish(f"appliance/{names[0]}/ask", json.dumps(
            {"id": "busy", "text": "Tell me a very long story about a dragon.",
             "max_tokens": 600}), qos=1)
        while "busy" not in asker.first:  # it is generating
            time.sleep(0.01)
        ids = [f"{take_below}-{i}" for i in range(asks)]
        started = time.perf_counter()
        for i, request_id in enumerate(ids):
            asker.done[request_id] = threading.Event()
            asker.client.publish(SITE + "/ask", json.dumps(
                {"id": request_id, "text": QUESTIONS[i % len(QUESTIONS)], "max_tokens": 8}),
                qos=1)
        for request_id in ids:
            if not asker.done[request_id].wait(300):
                raise RuntimeError(f"no answer to site ask {request_id}")
        slowest = (time.perf_counter() - started) * 1000
        return dict(Counter(str(asker.answers[r]["device_id"]) for r in ids)), slowest
    finally:
        asker.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)


def run_escalation_bench(model: ResolvedModel, rounds: int = 3, max_tokens: int = 24,
                         fleet_asks: int = 9) -> EscalationBench:
    """Everything on private processes; the model file plays both tiers."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        server, endpoint = _server(model.path, work / "server.log")
        try:
            config = _config(work, "esc", model.path, broker.port,
                             f"escalation:\n  enabled: true\n  endpoint: {endpoint}\n"
                             f"  model: {ALIAS}\n  first_token_timeout_s: 30\n")
            proc = _run(config)
            try:
                asker = _Asker(broker.port, "appliance/esc")
                asker.wait_online("appliance/esc")
                asker.ask("appliance/esc/ask", "warm", "Hi.", 2, "remote")
                direct, through = asyncio.run(_compare(endpoint, asker, rounds, max_tokens))
                asker.close()
            finally:
                proc.terminate()
                proc.wait(20)
            handing_on, wait_on = _spread(work, model.path, broker.port, 1, fleet_asks)
            round_robin, wait_rr = _spread(work, model.path, broker.port, 1000, fleet_asks)
        finally:
            server.kill()
            server.wait(10)
            broker.stop()
    engine = Engine(LlmSettings(model_path=model.path, temperature=0.0, n_ctx=1024), model)
    try:
        engine.warm_up()
        watched, unwatched = [], []
        for i in range(rounds * 2):
            question = QUESTIONS[i % len(QUESTIONS)] + " Tell me more."
            unwatched.append(engine.complete(ChatRequest(question, max_tokens=64)).tokens_per_s)
            watched.append(engine.complete(ChatRequest(
                question, max_tokens=64, confidence=Confidence(8, -100.0))).tokens_per_s)
    finally:
        engine.close()
    return EscalationBench(
        direct_ttft_ms=statistics.median(t for t, _ in direct),
        appliance_ttft_ms=statistics.median(t for t, _ in through),
        direct_total_ms=statistics.median(t for _, t in direct),
        appliance_total_ms=statistics.median(t for _, t in through),
        watched_tps=statistics.median(watched), unwatched_tps=statistics.median(unwatched),
        spread_handing_on=handing_on, spread_round_robin=round_robin,
        wait_handing_on_ms=wait_on, wait_round_robin_ms=wait_rr)

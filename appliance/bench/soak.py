"""``appliance bench soak``: minutes of mixed traffic, with memory, descriptors and threads watched.

A private ``appliance run`` (:class:`~appliance.bench.private_run.PrivateAppliance`),
escalating to a local OpenAI-compatible upstream (``python -m llama_cpp.server``
on the same model), takes, from a few clients at once and in turn:

* MQTT asks; asks cancelled while they are answered; a phrase that proposes
  an action (one record on ``<base>/action``); asks sent to the upstream
  (``tier: remote``);
* every valid HTTP and Wyoming request of the fuzz run (:func:`valid_requests`:
  Ollama and OpenAI chat, streamed and whole, listings, Wyoming describe,
  synthesize, transcribe and transcripts).

Each minute it samples the service and its model worker: resident memory,
open file descriptors (``/proc/PID/fd``) and threads (``/proc/PID/status``),
with the requests answered and failed so far. At the end, each figure's
growth per minute (least squares over the samples after the first minute,
which pays for warm-up) and a verdict: growth is steady when it is above
the figure's allowance over those samples and over their later half too (a
figure that levels off, as caches fill, is not a leak).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.bench.broker import free_port, wait_port
from appliance.bench.fuzz_servers import send_valid, valid_requests
from appliance.bench.private_run import PrivateAppliance
from appliance.hardware import rss_bytes

ALIAS = "soak-remote"
ACTION_TOPIC = "site/soak/fan"
EXTRA = ("actions:\n  - name: fan_on\n    description: Turn the fan on\n"
         "    phrases: [turn on the fan]\n"
         f"    publish: {{topic: {ACTION_TOPIC}, payload: {{state: 'ON'}}}}\n")
ALLOWANCE = {"rss_mib": 1.0, "fds": 0.5, "threads": 0.5}
"""Growth per minute above which a figure that also ends at its largest grows steadily."""
MIN_SAMPLES = 4
"""Samples after the first minute that a verdict of steady growth needs."""
CLIENTS = 3
WAIT_S = 180.0


@dataclass(frozen=True)
class Sample:
    """One minute's figures: ``app``/``worker`` pairs of RSS (MiB), descriptors, threads."""

    minute: float
    rss_mib: tuple[float, float]
    fds: tuple[int, int]
    threads: tuple[int, int]
    answered: int
    failed: int


@dataclass(frozen=True)
class Soak:
    """The samples, the growth per minute of each figure (app + worker), and the first failures."""

    samples: list[Sample]
    growth: dict[str, float]
    steady: list[str]
    answered: int
    failed: int
    failures: list[str]
    alive: bool

    @property
    def judged(self) -> bool:
        """Whether the run was long enough for a verdict on growth."""
        return sum(s.minute >= 1.0 for s in self.samples) >= MIN_SAMPLES


def _fds(pid: int | None) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir())) if pid else 0
    except OSError:
        return 0


def _threads(pid: int | None) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


class _Mqtt:
    """A paho client that asks, cancels and waits for each answer or action record by id."""

    def __init__(self, port: int, base: str) -> None:
        self.base = base
        self.arrived: dict[str, threading.Event] = {}
        self.bodies: dict[str, dict[str, object]] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"soak-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{base}/answer", 1), (f"{base}/error", 1),
                               (f"{base}/action", 1), (f"{base}/answer/stream", 0)])
        ready.wait(10)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        body = json.loads(m.payload)
        key = f"{m.topic.rsplit('/', 1)[-1]}:{body.get('id', '')}"
        if key.startswith("stream:") and key in self.bodies:
            return  # only the first chunk matters
        if key.startswith("error:") and body.get("topic") == f"{self.base}/ask":
            refused = {"finish_reason": "error", "error": body.get("error")}
            for kind in ("answer", "stream"):  # a refused ask ends its waits at once
                self.bodies[f"{kind}:{body.get('id', '')}"] = refused
                self.arrived.setdefault(f"{kind}:{body.get('id', '')}", threading.Event()).set()
            return
        self.bodies[key] = body
        self.arrived.setdefault(key, threading.Event()).set()

    def wait(self, key: str) -> dict[str, object] | None:
        """The message of ``key`` (``answer:<id>``, ``action:<id>``...), or ``None`` in time."""
        if not self.arrived.setdefault(key, threading.Event()).wait(WAIT_S):
            return None
        self.arrived.pop(key)
        return self.bodies.pop(key)

    def ask(self, request_id: str, text: str, cancel: bool = False,
            **extra: object) -> str | None:
        """Ask (and with ``cancel``, cancel once the answer streams); why it failed, or ``None``."""
        self.client.publish(f"{self.base}/ask", json.dumps(
            {"id": request_id, "text": text, "max_tokens": 16, **extra}), qos=1)
        if cancel:
            if self.wait(f"stream:{request_id}") is None:
                return f"mqtt {request_id}: nothing streamed"
            self.client.publish(f"{self.base}/cmd/cancel", json.dumps({"id": request_id}), qos=1)
        answer = self.wait(f"answer:{request_id}")
        self.bodies.pop(f"stream:{request_id}", None)
        if answer is None:
            return f"mqtt {request_id}: no answer"
        if answer.get("finish_reason") == "error":
            return f"mqtt {request_id}: {answer.get('error')}"
        return None

    def act(self, request_id: str) -> str | None:
        """Propose the action by its phrase; ``None`` once its record arrives."""
        self.client.publish(f"{self.base}/ask", json.dumps(
            {"id": request_id, "text": "turn on the fan"}), qos=1)
        record = self.wait(f"action:{request_id}")
        answer = self.wait(f"answer:{request_id}")
        return None if record and answer else f"action {request_id}: no record or no answer"

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _upstream(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_port(port, 120)
    return proc, f"http://127.0.0.1:{port}/v1"


def _escalation(endpoint: str) -> str:
    return (f"escalation:\n  enabled: true\n  endpoint: {endpoint}\n  model: {ALIAS}\n"
            "  first_token_timeout_s: 60\n  timeout_s: 120\n")


def _sample(app: PrivateAppliance, started: float, answered: int, failed: int) -> Sample:
    pids = (app.proc.pid if app.proc else None, app.worker_pid())
    app_mib, worker_mib = (rss_bytes(p) / (1 << 20) if p else 0.0 for p in pids)
    return Sample((time.monotonic() - started) / 60, (app_mib, worker_mib),
                  (_fds(pids[0]), _fds(pids[1])), (_threads(pids[0]), _threads(pids[1])),
                  answered, failed)


def _verdict(samples: list[Sample]) -> tuple[dict[str, float], list[str]]:
    kept = [s for s in samples if s.minute >= 1.0] or samples
    xs = [s.minute for s in kept]
    series = {"rss_mib": [sum(s.rss_mib) for s in kept], "fds": [sum(s.fds) for s in kept],
              "threads": [sum(s.threads) for s in kept]}
    growth = {name: _slope(xs, ys) if len(ys) > 1 else 0.0 for name, ys in series.items()}
    half = len(xs) // 2  # a figure that levels off (caches filling) is not growing
    steady = [name for name, ys in series.items()
              if len(ys) >= MIN_SAMPLES and growth[name] > ALLOWANCE[name]
              and _slope(xs[half:], ys[half:]) > ALLOWANCE[name]]
    return growth, steady


def run_soak(model: Path, speech: Path | None, minutes: float,
             report: Callable[[Sample], None] = lambda _s: None) -> Soak:
    """Soak a private ``appliance run`` on ``model`` for ``minutes``; ``report`` each sample."""
    with tempfile.TemporaryDirectory(prefix="appliance-soak-") as tmp:
        work = Path(tmp)
        upstream, endpoint = _upstream(model, work / "upstream.log")
        try:
            with PrivateAppliance(work, model, speech, EXTRA + _escalation(endpoint)) as app:
                return _soak(app, model.stem, speech is not None, minutes, report)
        finally:
            upstream.terminate()
            upstream.wait(30)


STORY = "Tell me a very long story about a dragon, a knight and a castle."


def _operations(app: PrivateAppliance, mqtt: _Mqtt, model: str,
                asr: bool) -> list[Callable[[str], str | None]]:
    """Every kind of request, each taking a unique id."""
    ops: list[Callable[[str], str | None]] = [
        lambda i: mqtt.ask(f"ask-{i}", "Name a colour."),
        lambda i: mqtt.ask(f"cancel-{i}", STORY, cancel=True, max_tokens=48),
        lambda i: mqtt.act(f"act-{i}"),
        lambda i: mqtt.ask(f"remote-{i}", "Name a fruit.", tier="remote"),
    ]
    for valid in valid_requests(f"127.0.0.1:{app.http_port}", model, asr=asr, tts=True):
        ops.append(lambda _i, v=valid: asyncio.run(send_valid(app.http_port, app.wyoming_port,
                                                              v)))
    return ops


def _soak(app: PrivateAppliance, model: str, asr: bool, minutes: float,
          report: Callable[[Sample], None]) -> Soak:
    mqtt = _Mqtt(app.broker.port, app.base)
    ops = _operations(app, mqtt, model, asr)
    counts = {"answered": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()
    end = started + minutes * 60
    ids = itertools.count()

    def client(offset: int) -> None:
        for n in itertools.count(offset):
            if time.monotonic() >= end:
                return
            reason = ops[n % len(ops)](str(next(ids)))
            with lock:
                counts["failed" if reason else "answered"] += 1
                if reason and len(failures) < 20:
                    failures.append(reason)

    threads = [threading.Thread(target=client, args=(i * len(ops) // CLIENTS,), daemon=True)
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    samples = []
    for minute in range(int(minutes) + 1):
        time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
        with lock:
            samples.append(_sample(app, started, counts["answered"], counts["failed"]))
        report(samples[-1])
    for thread in threads:
        thread.join(WAIT_S)
    mqtt.close()
    growth, steady = _verdict(samples)
    alive = app.proc is not None and app.proc.poll() is None
    return Soak(samples, growth, steady, counts["answered"], counts["failed"], failures, alive)

"""``appliance bench api``: what the HTTP and Wyoming APIs add over the engine and bare vosk.

* Generation, in one run, interleaved (each path first in turn) so that drift
  hits every path alike: :meth:`Engine.complete` in this process (wall time
  from the call to its first chunk, and its own tokens/s) against the same
  kind of questions streamed by ``appliance run`` through Ollama's
  ``/api/chat`` (NDJSON) and OpenAI's ``/v1/chat/completions`` (SSE), timed
  by a plain HTTP client: from sending the request to the first text, and
  tokens/s from the first text to the last line. Prompt evaluation varies by
  tens of milliseconds from one generation to the next, more than the APIs
  add, so what an API adds is also measured per request: the client's time to
  first token less the worker's own for that generation (from the ``completed``
  log line), and the client's tokens/s over the worker's. Targets: at most
  10 ms added to time to first token at p50, at least 95 % of the tokens/s.
* Speech (:mod:`~appliance.bench.speech_rtf`): the real-time factor (processing
  time over audio length) of a Wyoming ``transcribe`` stream sent at full speed,
  against a bare vosk ``KaldiRecognizer`` fed the same audio in this process.
  Target: at most 1.1x.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from appliance.bench.broker import LocalBroker, free_port
from appliance.bench.speech_rtf import speech_rtf
from appliance.catalog import ResolvedModel
from appliance.config import Settings
from appliance.llm import ChatRequest, Chunk, Engine

QUESTIONS = ("What is two plus two?", "Name a colour.", "Why is the sky blue?",
             "Say hello to the kitchen.", "What day comes after Monday?")
SETTLE_S = 0.3
"""Pause after each answer: llama.cpp's threads spin for a while after a generation, and a
path that starts while they still spin would look faster than one that starts cold."""


@dataclass(frozen=True)
class PathFigures:
    """p50 figures of one way to the model; ``added_ms`` and ``rate_share`` per request."""

    name: str
    ttft_ms: float
    tokens_per_s: float
    added_ms: float = 0.0
    rate_share: float = 1.0


@dataclass(frozen=True)
class ApiBench:
    """The figures of one run; the first path is the engine itself."""

    paths: tuple[PathFigures, ...]
    rounds: int
    max_tokens: int
    wyoming_rtf: float | None
    vosk_rtf: float | None
    audio_s: float

    @property
    def engine(self) -> PathFigures:
        """The baseline."""
        return self.paths[0]


@dataclass
class _Timed:
    """When one request started, when its first and last text arrived, how many tokens."""

    started: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float = 0.0
    tokens: int = 0

    def text(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last

    @property
    def ttft_ms(self) -> float:
        if self.first is None or self.tokens < 2:
            raise RuntimeError("an answer had fewer than two tokens; raise --max-tokens")
        return (self.first - self.started) * 1000

    @property
    def tokens_per_s(self) -> float:
        span = self.last - (self.first or self.last)
        return (self.tokens - 1) / span if span > 0 else 0.0


def _engine(engine: Engine, question: str, max_tokens: int) -> tuple[float, float]:
    timed = _Timed()

    def on_chunk(_chunk: Chunk) -> None:
        if timed.first is None:
            timed.text()

    completion = engine.complete(ChatRequest(question, max_tokens=max_tokens),
                                 on_chunk=on_chunk)
    timed.tokens = completion.tokens
    return timed.ttft_ms, completion.tokens_per_s


def _ollama(client: httpx.Client, url: str, model: str, question: str,
            max_tokens: int) -> tuple[float, float]:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "options": {"num_predict": max_tokens}}
    timed = _Timed()
    with client.stream("POST", f"{url}/api/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            part = json.loads(line)
            if part["message"]["content"]:
                timed.text()
            if part["done"]:
                timed.last, timed.tokens = time.perf_counter(), part["eval_count"]
    return timed.ttft_ms, timed.tokens_per_s


def _openai(client: httpx.Client, url: str, model: str, question: str,
            max_tokens: int) -> tuple[float, float]:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    timed = _Timed()
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                timed.text()
            if chunk.get("usage"):
                timed.last = time.perf_counter()
                timed.tokens = chunk["usage"]["completion_tokens"]
    return timed.ttft_ms, timed.tokens_per_s


def service_lines(device_id: str, work: Path, settings: Settings, model: ResolvedModel,
                  broker: LocalBroker, zone: Path) -> list[str]:
    """A bench device's config up to its ``api`` section: greedy, the site's threads."""
    llm = settings.llm
    return [
        f"device_id: {device_id}", f"data_dir: {work / 'data'}",
        "llm:", f"  model_path: {model.path}", "  temperature: 0", f"  n_ctx: {llm.n_ctx}",
        *([f"  n_threads: {llm.n_threads}"] if llm.n_threads else []),
        *([f"  n_threads_batch: {llm.n_threads_batch}"] if llm.n_threads_batch else []),
        "mqtt:", f"  port: {broker.port}", "  ask_rate_per_min: 100000",
        "  discovery: {enabled: false}",
        "thermal:", f"  zone_path: {zone}",
    ]


def _config(work: Path, settings: Settings, model: ResolvedModel, broker: LocalBroker,
            http_port: int, wyoming_port: int) -> Path:
    voice = settings.voice
    lines = [*service_lines("bench-api", work, settings, model, broker,
                            settings.thermal.zone_path),
             "api:", f"  http: {{listen: '127.0.0.1:{http_port}'}}"]
    if voice.model_path is not None:
        lines += [f"  wyoming: {{listen: 'tcp://127.0.0.1:{wyoming_port}', zeroconf: false}}",
                  "voice:", f"  model_path: {voice.model_path}", "  tts: none",
                  f"  grammar: {json.dumps(list(voice.grammar), ensure_ascii=False)}"]
    config = work / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("appliance run ended:\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            if httpx.get(f"{url}/api/ps", timeout=5).json()["models"]:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("appliance run did not load its model within 300 s")


def run_api_bench(settings: Settings, model: ResolvedModel, *, rounds: int = 4,
                  max_tokens: int = 32, speech_voice: str = "en") -> ApiBench:
    """Measure everything against a private ``appliance run``; the model comes from ``settings``."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        http_port, wyoming_port = free_port(), free_port()
        config = _config(work, settings, model, broker, http_port, wyoming_port)
        log = work / "run.log"
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(config),
                                 "run"], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        engine = Engine(settings.llm, model)
        try:
            url = f"http://127.0.0.1:{http_port}"
            wait_ready(url, proc, log)
            engine.warm_up()
            figures = _generation(engine, url, model.name, rounds, max_tokens, log)
            speech = speech_rtf(settings, wyoming_port, speech_voice, work, rounds)
        finally:
            engine.close()
            proc.terminate()
            proc.wait(15)
            broker.stop()
    return ApiBench(paths=figures, rounds=rounds, max_tokens=max_tokens,
                    wyoming_rtf=speech[0], vosk_rtf=speech[1], audio_s=speech[2])


def _generation(engine: Engine, url: str, model: str, rounds: int, max_tokens: int,
                log: Path) -> tuple[PathFigures, ...]:
    paths = {"engine": lambda q: _engine(engine, q, max_tokens)}
    calls: list[tuple[str, tuple[float, float]]] = []
    with httpx.Client(timeout=300) as client:
        paths["ollama /api/chat"] = lambda q: _ollama(client, url, model, q, max_tokens)
        paths["openai /v1/chat"] = lambda q: _openai(client, url, model, q, max_tokens)
        names = list(paths)
        for name in names:  # warm every path (and both prefix caches) once
            calls.append(("warm " + name, paths[name](QUESTIONS[0])))
            time.sleep(SETTLE_S)
        for i in range(rounds * len(QUESTIONS)):
            for name in names[i % 3:] + names[: i % 3]:  # each path goes first in turn
                # A question no path has seen, so that each reads it afresh: the worker
                # serves two paths, and would otherwise find the other's prompt cached.
                question = f"{QUESTIONS[i % len(QUESTIONS)]} (#{len(calls)})"
                calls.append((name, paths[name](question)))
                time.sleep(SETTLE_S)
    served = [(name, figures) for name, figures in calls if name not in ("engine",
                                                                          "warm engine")]
    worker = worker_generations(log)
    if len(worker) != len(served):
        raise RuntimeError(f"{len(served)} API requests, but appliance run logged "
                           f"{len(worker)} generations")
    added: dict[str, list[tuple[float, float]]] = {}
    for (name, (ttft, rate)), (own_ttft, own_rate) in zip(served, worker, strict=True):
        added.setdefault(name, []).append((ttft - own_ttft, rate / own_rate if own_rate
                                           else 0.0))
    figures = []
    for name in names:
        found = [f for n, f in calls if n == name]
        extra = added.get(name, [(0.0, 1.0)])
        figures.append(PathFigures(name, statistics.median(f[0] for f in found),
                                   statistics.median(f[1] for f in found),
                                   statistics.median(e[0] for e in extra),
                                   statistics.median(e[1] for e in extra)))
    return tuple(figures)


def worker_generations(log: Path) -> list[tuple[float, float]]:
    """Time to first token and tokens/s of each generation ``appliance run`` logged, in order."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"completed"' in line:
            event = json.loads(line)
            if event.get("event") == "completed":
                found.append((float(event["ttft_ms"]), float(event["tokens_per_s"])))
    return found

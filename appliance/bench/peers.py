"""``appliance bench peers``: the appliance against the servers a site would otherwise run.

Every server is started once, with the same model file, ``n_ctx`` and threads, and
all run side by side while one asyncio client (one process, no threads, so that it
does not take the CPU it measures) talks to each in turn:

* **us**: a private ``appliance run`` with the OpenAI API on a loopback port, once
  with ``llm.parallel: 1`` and once with ``4``;
* **llama-server**: llama.cpp's native server (:mod:`appliance.bench.llama_server`),
  ``--parallel 1`` and ``--parallel 4``, with ``-c n_ctx x parallel`` so that each
  slot holds ``n_ctx`` as each of our sequences does;
* **llama_cpp.server**: llama-cpp-python's Python server.

Every request is ``/v1/chat/completions``, streamed, greedy (temperature 0, no
repeat penalty: each server's own default differs), with a 300-token system
prompt and a question no server has seen (the system prompt is cached by all).
The measurements go round the servers, each first in turn, so that drift and
other load hit all alike:

* a fresh question, then a follow-up that sends the first answer back as history:
  time to first token (request sent to first content delta), tokens/s from the
  first delta to the last, the whole stream's time;
* 4 and 8 clients at once (1 client is the fresh question): tokens over the wall
  time from the first request sent to the last answer's end, and the p95 first token;
* at the end, resident memory (ours: supervisor and model worker) and the CPU time
  each server spent per generated token while measured.

Token counts: ``max_tokens`` is fixed, ``ignore_eos`` goes to the native server
(the only one that honours it), and the questions ask for long answers, so that
every server writes ``max_tokens`` (the report says how many answers stopped
sooner). A count is the server's ``usage.completion_tokens`` where it sends one,
else its content deltas (one per token in llama-cpp-python).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from appliance.bench.api import SETTLE_S, wait_ready, worker_generations
from appliance.bench.broker import LocalBroker, free_port
from appliance.bench.console import cpu_seconds
from appliance.bench.private_run import stop_process
from appliance.errors import ApplianceError
from appliance.hardware import rss_bytes

SYSTEM_PROMPT = (
    "You are the voice assistant of a house, running offline on a small computer in the "
    "hallway. You answer the people who live here and their guests, in plain, friendly English, "
    "without lists or markdown unless asked, because your answers are often read aloud by a "
    "speech synthesizer. The house has a kitchen, a living room, two bedrooms, a bathroom, a "
    "garage, a small office and a garden with a greenhouse. Lights, blinds, the heat pump, the "
    "ventilation, the garage door, the irrigation valves and the washing machine are connected "
    "to a home automation system; sensors report temperature, humidity, carbon dioxide, door and "
    "window contacts, motion, power use and the water level of the rain barrel. When someone "
    "asks you to do something in the house, say briefly what you will do. When someone asks a "
    "question, answer it directly first and then add one or two useful details. If you do not "
    "know something, say so honestly rather than guessing, and never invent sensor readings. "
    "Keep safety in mind: do not open the garage door or unlock anything unless the request is "
    "clear. Be patient with children and with older people, speak in short sentences, and "
    "avoid jargon. The family likes gardening, cooking, cycling, astronomy and board games, and "
    "they appreciate a little humour now and then. Today is an ordinary weekday, the weather is "
    "mild, and nobody is in a hurry, so you may explain things properly when it helps. If a "
    "question is unclear, ask one short question back.")
"""About 300 tokens with SmolLM2's and Gemma 3's tokenizers (305 and 300)."""
QUESTIONS = (
    "Tell me a long story about a lighthouse keeper and a lost cat.",
    "Explain in detail how a heat pump warms the house in winter.",
    "Describe, step by step, how to plant tomatoes in the greenhouse.",
    "Write a long letter to a friend about a cycling trip in the mountains.",
    "Explain how the phases of the moon happen, with lots of detail.",
    "Describe a full day of cooking for a family dinner party.",
)
FOLLOW_UP = "Go on, tell me more about that."
OURS, NATIVE, PYTHON = "us", "llama-server", "llama_cpp.server"
READY_S = 300.0


@dataclass(frozen=True)
class Stream:
    """One streamed answer as the client saw it (``perf_counter`` seconds)."""

    sent: float
    first: float | None
    last: float
    tokens: int
    text: str
    finish: str | None = None

    @property
    def ttft_ms(self) -> float:
        """From the request sent to the first content delta."""
        return ((self.first if self.first is not None else self.last) - self.sent) * 1000

    @property
    def total_s(self) -> float:
        """From the request sent to the last line."""
        return self.last - self.sent

    @property
    def tokens_per_s(self) -> float:
        """Generation speed: tokens after the first over the time after the first."""
        span = self.last - self.first if self.first is not None else 0.0
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


@dataclass
class StreamParser:
    """Reads one OpenAI SSE stream: content deltas, the usage line, the finish reason."""

    sent: float
    first: float | None = None
    last: float = 0.0
    deltas: int = 0
    usage: int | None = None
    finish: str | None = None
    parts: list[str] = field(default_factory=list)

    def line(self, raw: bytes | str, now: float) -> None:
        """Take one line of the stream, received at ``now``."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        text = text.strip()
        if not text.startswith("data:"):
            return
        payload = text[5:].strip()
        self.last = now
        if payload == "[DONE]":
            return
        chunk = json.loads(payload)
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.first = now if self.first is None else self.first
                self.deltas += 1
                self.parts.append(content)
            self.finish = choice.get("finish_reason") or self.finish
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.usage = int(usage["completion_tokens"])

    def done(self) -> Stream:
        """The answer: tokens by the server's usage if it sent one, else its deltas."""
        tokens = self.usage if self.usage is not None else self.deltas
        return Stream(self.sent, self.first, self.last or self.sent, tokens,
                      "".join(self.parts), self.finish)


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Wave:
    """``len(streams)`` requests sent at once."""

    streams: tuple[Stream, ...]

    @property
    def wall_s(self) -> float:
        return max(s.last for s in self.streams) - min(s.sent for s in self.streams)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)


def aggregate_rate(waves: Iterable[Wave]) -> float:
    """Tokens per second of wall time over the waves, each wave timed from send to last end."""
    found = list(waves)
    wall = sum(w.wall_s for w in found)
    return sum(w.tokens for w in found) / wall if wall > 0 else 0.0


@dataclass(frozen=True)
class Row:
    """One figure of the report: its key, label, unit, and which way is better."""

    key: str
    label: str
    unit: str
    higher_wins: bool
    ratio: bool = True


def rows(clients: Sequence[int]) -> tuple[Row, ...]:
    """The report's rows for the given concurrency levels (1 client: the fresh questions)."""
    found = [Row("ttft_p50", "first token p50, fresh question", "ms", False),
             Row("ttft_p95", "first token p95, fresh question", "ms", False),
             Row("rate", "generation, one stream, p50", "tok/s", True),
             Row("total", "one stream's total time, p50", "s", False),
             Row("followup_p50", "follow-up first token p50", "ms", False)]
    for n in clients:
        found += [Row(f"agg_{n}", f"{n} client{'s' * (n > 1)}: aggregate", "tok/s", True),
                  Row(f"ttft95_{n}", f"{n} client{'s' * (n > 1)}: first token p95", "ms",
                      False)]
    found += [Row("rss", "resident memory", "MB", False),
              Row("cpu_ms_per_token", "CPU time per generated token", "ms", False),
              Row("tokens", "tokens per answer, mean", "", False, ratio=False),
              Row("short", "answers shorter than max_tokens", "", False, ratio=False)]
    return tuple(found)


@dataclass
class PeerFigures:
    """Everything measured on one server."""

    name: str
    fresh: list[Stream] = field(default_factory=list)
    followups: list[Stream] = field(default_factory=list)
    waves: dict[int, list[Wave]] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    worker: list[tuple[float, float]] = field(default_factory=list)
    """Ours: the worker's own (first token ms, tok/s) of each fresh question, from its log."""
    ready_s: float = 0.0
    """From starting the server to its model answering (all start together)."""

    def figures(self, clients: Sequence[int], max_tokens: int) -> dict[str, float]:
        """The row values (see :func:`rows`); nan where nothing was measured."""
        fresh = self.fresh
        every = [*fresh, *self.followups, *(s for ws in self.waves.values() for w in ws
                                            for s in w.streams)]
        tokens = sum(s.tokens for s in every)
        out = {"ttft_p50": percentile([s.ttft_ms for s in fresh], 50),
               "ttft_p95": percentile([s.ttft_ms for s in fresh], 95),
               "rate": percentile([s.tokens_per_s for s in fresh], 50),
               "total": percentile([s.total_s for s in fresh], 50),
               "followup_p50": percentile([s.ttft_ms for s in self.followups], 50),
               "rss": sum(self.rss.values()) / 1e6,
               "cpu_ms_per_token": self.cpu_s * 1000 / tokens if tokens else math.nan,
               "tokens": tokens / len(every) if every else math.nan,
               "short": float(sum(s.tokens < max_tokens for s in every))}
        for n in clients:
            # One client is the fresh questions, each a wave of its own.
            waves = [Wave((s,)) for s in fresh] if n == 1 else self.waves.get(n, [])
            out[f"agg_{n}"] = aggregate_rate(waves) if waves else math.nan
            out[f"ttft95_{n}"] = percentile([s.ttft_ms for w in waves for s in w.streams], 95)
        return out


def ratio(ours: float, theirs: float) -> float:
    """Our figure over theirs; nan when either is missing or theirs is 0."""
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan
    return ours / theirs


def ahead(value: float, higher_wins: bool) -> bool | None:
    """Whether a ratio ours/theirs means we are ahead (a tie counts as ahead); None if nan."""
    if math.isnan(value):
        return None
    return value >= 1.0 if higher_wins else value <= 1.0


# --- the servers -------------------------------------------------------------------------


@dataclass
class Peer:
    """One server under test: how to start it, and its process once started."""

    kind: str
    parallel: int = 1
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    model_id: str = ""
    ready_s: float = 0.0

    @property
    def name(self) -> str:
        return self.kind if self.kind == PYTHON else f"{self.kind} -np {self.parallel}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> dict[str, int]:
        """The processes whose memory and CPU count: ours has a supervisor and a worker."""
        if self.proc is None:
            return {}
        if self.kind != OURS:
            return {"server": self.proc.pid}
        found = {"supervisor": self.proc.pid}
        worker = python_child(self.proc.pid)
        if worker is not None:
            found["worker"] = worker
        return found

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def python_child(pid: int) -> int | None:
    """The first Python child of ``pid`` (the service's model worker)."""
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().startswith("python"):
                return int(child)
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Setup:
    """What every server is given alike."""

    model: Path
    n_ctx: int
    threads: int
    max_tokens: int


def _start(peer: Peer, setup: Setup, work: Path, native: Path | None,
           broker: LocalBroker | None) -> None:
    peer.log = work / f"{peer.name.replace(' ', '')}.log"
    host, port, t = "127.0.0.1", str(peer.port), str(setup.threads)
    if peer.kind == OURS:
        assert broker is not None
        config = work / f"us-{peer.parallel}.yaml"
        (work / "temp").write_text("51000\n")
        config.write_text("\n".join([
            f"device_id: bench-peers-{peer.parallel}",
            f"data_dir: {work / f'data-{peer.parallel}'}",
            "llm:", f"  model_path: {setup.model}", "  temperature: 0",
            f"  n_ctx: {setup.n_ctx}", f"  n_threads: {t}", f"  n_threads_batch: {t}",
            f"  parallel: {peer.parallel}", f"  max_tokens: {setup.max_tokens}",
            "mqtt:", f"  port: {broker.port}", "  ask_rate_per_min: 100000",
            "  queue_size: 1000", "  discovery: {enabled: false}",
            "thermal:", f"  zone_path: {work / 'temp'}",
            "api:", f"  http: {{listen: '{host}:{port}'}}"]) + "\n")
        argv = [sys.executable, "-m", "appliance", "--config", str(config), "run"]
    elif peer.kind == NATIVE:
        assert native is not None
        argv = [str(native), "-m", str(setup.model), "-c", str(setup.n_ctx * peer.parallel),
                "-np", str(peer.parallel), "-t", t, "-tb", t, "--host", host, "--port", port,
                "--no-webui"]
    else:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(setup.model),
                "--n_ctx", str(setup.n_ctx), "--n_threads", t, "--n_threads_batch", t,
                "--host", host, "--port", port, "--verbose", "False"]
    peer.ready_s = time.monotonic()
    peer.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=peer.log.open("wb"),
                                 stdin=subprocess.DEVNULL)


def _ready(peer: Peer) -> None:
    assert peer.proc is not None and peer.log is not None
    if peer.kind == OURS:
        try:
            wait_ready(peer.url, peer.proc, peer.log)
        except RuntimeError as exc:
            tail = peer.log.read_text(errors="replace")[-1500:]
            raise ApplianceError(f"{peer.name}: {exc}\n{tail}") from exc
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            raise ApplianceError(f"{peer.name} ended:\n"
                                 + peer.log.read_text(errors="replace")[-2000:])
        try:
            response = httpx.get(f"{peer.url}/v1/models", timeout=5)
            if response.status_code == 200 and response.json()["data"] and (
                    peer.kind != NATIVE
                    or httpx.get(f"{peer.url}/health", timeout=5).status_code == 200):
                peer.model_id = response.json()["data"][0]["id"]
                peer.ready_s = time.monotonic() - peer.ready_s
                return
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    raise ApplianceError(f"{peer.name} did not load its model within {READY_S:.0f} s")


# --- the client ----------------------------------------------------------------------------


async def turn(session: object, peer: Peer, messages: list[dict[str, str]],
               max_tokens: int) -> Stream:
    """One streamed chat completion; the clock starts as the request is sent."""
    body: dict[str, object] = {
        "model": peer.model_id, "messages": messages, "max_tokens": max_tokens,
        "temperature": 0, "repeat_penalty": 1.0, "stream": True,
        "stream_options": {"include_usage": True}}
    if peer.kind == NATIVE:
        body["ignore_eos"] = True
    parser = StreamParser(time.perf_counter())
    async with session.post(f"{peer.url}/v1/chat/completions",  # type: ignore[attr-defined]
                            json=body) as response:
        if response.status != 200:
            raise ApplianceError(f"{peer.name}: HTTP {response.status}: "
                                 f"{(await response.text())[:300]}")
        async for raw in response.content:
            parser.line(raw, time.perf_counter())
    return parser.done()


def _question(n: int) -> list[dict[str, str]]:
    # A number no server has seen: each reads the question afresh (the system prompt is
    # cached by all, as a site's would be).
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{QUESTIONS[n % len(QUESTIONS)]} (#{n})"}]


@dataclass(frozen=True)
class PeersBench:
    """The figures of one run, the servers in the order they were listed."""

    peers: tuple[PeerFigures, ...]
    clients: tuple[int, ...]
    rounds: int
    waves: int
    max_tokens: int
    n_ctx: int
    threads: int
    model: str
    native: str
    load_before: str
    load_after: str
    seconds: float


def uptime() -> str:
    """``uptime``'s line, or the load averages if it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_peers_bench(model: Path, *, native: Path | None, native_note: str = "",
                    ours_parallel: Sequence[int] = (1, 4),
                    native_parallel: Sequence[int] = (1, 4), python_server: bool = True,
                    clients: Sequence[int] = (1, 4, 8), rounds: int = 6, waves: int = 2,
                    max_tokens: int = 96, n_ctx: int = 2048,
                    threads: int = 2) -> PeersBench:
    """Start every server, measure them interleaved, stop them."""
    setup = Setup(model, n_ctx, threads, max_tokens)
    peers = [Peer(OURS, p) for p in ours_parallel]
    peers += [Peer(NATIVE, p) for p in native_parallel] if native is not None else []
    peers += [Peer(PYTHON)] if python_server else []
    started, load_before = time.monotonic(), uptime()
    with tempfile.TemporaryDirectory(prefix="appliance-bench-peers-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker") if any(p.kind == OURS for p in peers) else None
        if broker is not None:
            broker.start()
        try:
            for peer in peers:
                _start(peer, setup, work, native, broker)
            for peer in peers:
                _ready(peer)
            figures = asyncio.run(_measure(peers, setup, clients, rounds, waves))
        finally:
            for peer in peers:
                peer.stop()
            if broker is not None:
                broker.stop()
    return PeersBench(tuple(figures), tuple(clients), rounds, waves, max_tokens, n_ctx,
                      threads, str(model), native_note, load_before, uptime(),
                      time.monotonic() - started)


async def _measure(peers: list[Peer], setup: Setup, clients: Sequence[int], rounds: int,
                   waves: int) -> list[PeerFigures]:
    import aiohttp

    figures = {p.name: PeerFigures(p.name, ready_s=p.ready_s) for p in peers}
    counter = iter(range(1 << 30))
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as session:

        async def fresh(peer: Peer) -> None:
            messages = _question(next(counter))
            logged = len(worker_generations(peer.log)) if peer.kind == OURS and peer.log else 0
            first = await turn(session, peer, messages, setup.max_tokens)
            figures[peer.name].fresh.append(first)
            if peer.kind == OURS and peer.log:
                await asyncio.sleep(0.05)  # the worker's log line follows its last chunk
                own = worker_generations(peer.log)[logged:]
                figures[peer.name].worker.extend(own[:1])
            await asyncio.sleep(SETTLE_S)
            history = [*messages, {"role": "assistant", "content": first.text},
                       {"role": "user", "content": f"{FOLLOW_UP} (#{next(counter)})"}]
            figures[peer.name].followups.append(
                await turn(session, peer, history, setup.max_tokens))

        async def wave(peer: Peer, n: int) -> None:
            streams = await asyncio.gather(*(turn(session, peer, _question(next(counter)),
                                                  setup.max_tokens) for _ in range(n)))
            figures[peer.name].waves.setdefault(n, []).append(Wave(tuple(streams)))

        for peer in peers:  # warm each server and its cache of the system prompt
            await turn(session, peer, _question(next(counter)), setup.max_tokens)
            await asyncio.sleep(SETTLE_S)
        cpu = {p.name: sum(cpu_seconds(pid) for pid in p.pids().values()) for p in peers}
        units = [(fresh, ()) for _ in range(rounds)]
        units += [(wave, (n,)) for n in clients if n > 1 for _ in range(waves)]
        for i, (measure, extra) in enumerate(units):
            for peer in peers[i % len(peers):] + peers[: i % len(peers)]:
                await measure(peer, *extra)  # type: ignore[operator]
                await asyncio.sleep(SETTLE_S)
        for peer in peers:
            pids = peer.pids()
            figures[peer.name].cpu_s = sum(cpu_seconds(pid) for pid in pids.values()) - cpu[
                peer.name]
            figures[peer.name].rss = {role: rss_bytes(pid) for role, pid in pids.items()}
    return [figures[p.name] for p in peers]

"""``appliance bench peers``: the appliance against the servers a site would otherwise run.

Every server (:mod:`appliance.bench.peer_servers`) is started once and all run side by
side while one asyncio client (one process, no threads, so that it does not take the
CPU it measures) talks to each in turn.

Every request is ``/v1/chat/completions``, streamed, greedy (temperature 0, no
repeat penalty: each server's own default differs), with a 300-token system
prompt and a question no server has seen (the system prompt is cached by all).
The measurements go round the servers, each first in turn, so that drift and
other load hit all alike:

* a fresh question, then a follow-up that sends the first answer back as history;
* 4 and 8 clients at once (1 client is the fresh question);
* at the end, resident memory (ours: supervisor and model worker) and the CPU time
  each server spent while measured.

What each figure means and how it is summed up is in :mod:`appliance.bench.peer_figures`.
``max_tokens`` is fixed, ``ignore_eos`` goes to the native server (the only one that
honours it), and the questions ask for long answers, so that every server writes
``max_tokens`` (the report says how many answers stopped sooner).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.bench.api import SETTLE_S, worker_generations
from appliance.bench.broker import LocalBroker
from appliance.bench.console import cpu_seconds
from appliance.bench.peer_figures import PeerFigures, Stream, StreamParser, Wave
from appliance.bench.peer_servers import (
    NATIVE,
    OURS,
    PYTHON,
    Peer,
    Setup,
    start_peer,
    wait_for_peer,
)
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
                start_peer(peer, setup, work, native, broker)
            for peer in peers:
                wait_for_peer(peer)
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

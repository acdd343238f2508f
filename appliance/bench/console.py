"""``appliance bench console``: what the console costs the device, in one run.

A private ``appliance run`` (its own mosquitto, the configured model, the
console on a free loopback port with a password set through
``appliance console password --stdin``, and the HTTP API to ask through) is
measured three ways:

* **First load:** the Overview page and every stylesheet and script it links,
  fetched as a browser does (``Accept-Encoding: gzip``), counted as the bytes
  that cross the wire (compressed). Budget: 150 KB.
* **CPU per console:** the supervisor process's CPU time (``/proc/<pid>/stat``,
  user + system; the model worker, a child, does not serve the pages) over the
  same window with no console open, then with ``consoles`` open on
  ``GET /events``; the difference per console, per minute.
* **Decode rate:** the worker's own tokens/s (its ``completed`` log line) for
  questions asked in pairs, one with no console open and one with ``consoles``
  open and streaming, each side first in turn. A pair shares whatever else the
  machine was doing at the time, so the figure is the median of the pairs'
  ratios. Target: at least 98 %.

A console is a plain socket reading the event stream, as a browser's
``EventSource`` does; it costs this process a little, not the appliance.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from appliance.bench.api import SETTLE_S, service_lines, wait_ready, worker_generations
from appliance.bench.broker import LocalBroker, free_port
from appliance.catalog import ResolvedModel
from appliance.config import Settings

FIRST_LOAD_BUDGET = 150_000
RATE_TARGET = 0.98
QUESTIONS = ("Why is the sky blue?", "Describe a greenhouse in spring.",
             "What does a thermostat do?", "Explain how a fan cools a room.")
PASSWORD = "bench console password"
_LINKED = re.compile(r'(?:href|src)="(static/[^"]+)"')
_FORM_TOKEN = re.compile(r'data-token="([^"]+)"')


@dataclass(frozen=True)
class ConsoleBench:
    """The figures of one run."""

    first_load: tuple[tuple[str, int], ...]
    """Each file of the Overview's first load and its compressed bytes."""
    consoles: int
    window_s: float
    idle_cpu_s: float
    """The supervisor's CPU time over the window with no console open."""
    live_cpu_s: float
    """The same with ``consoles`` open."""
    events: int
    """Events (and heartbeats) the consoles received in their window."""
    rates_alone: tuple[float, ...]
    """Decode tokens/s with no console open, one per pair."""
    rates_watched: tuple[float, ...]
    """The same with the consoles open, the pair's other question."""
    max_tokens: int

    @property
    def first_load_bytes(self) -> int:
        """The whole first load, compressed."""
        return sum(size for _name, size in self.first_load)

    @property
    def cpu_per_console_min_s(self) -> float:
        """CPU seconds one open console costs the supervisor per minute (at least 0)."""
        extra = max(self.live_cpu_s - self.idle_cpu_s, 0.0)
        return extra / self.consoles * 60.0 / self.window_s

    @property
    def idle_cpu_min_s(self) -> float:
        """The baseline: the supervisor's CPU seconds per minute with no console open."""
        return self.idle_cpu_s * 60.0 / self.window_s

    @property
    def rate_share(self) -> float:
        """The median over the pairs of decode tokens/s with the consoles open over none."""
        ratios = [watched / alone for alone, watched
                  in zip(self.rates_alone, self.rates_watched, strict=True) if alone]
        return statistics.median(ratios) if ratios else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EventReader(threading.Thread):
    """One open console: reads ``GET /events`` until :meth:`close`, counting events."""

    def __init__(self, port: int, cookie: str) -> None:
        super().__init__(daemon=True, name="console events")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Accept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode())
        self.events = 0
        self.first = threading.Event()
        self.stopping = threading.Event()
        self._buffer = b""

    def run(self) -> None:
        self.sock.settimeout(0.25)
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            self._buffer += data
            if not self.first.is_set() and b"\r\n\r\n" in self._buffer:
                head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    raise RuntimeError(f"GET /events: {head.splitlines()[0]!r}")
                self.first.set()
            self.events += self._buffer.count(b"\n\n")
            self._buffer = self._buffer[self._buffer.rfind(b"\n\n") + 2:] \
                if b"\n\n" in self._buffer else self._buffer

    def close(self) -> None:
        """Stop reading and close the connection."""
        self.stopping.set()
        self.join(5)
        self.sock.close()


def open_consoles(port: int, cookie: str, count: int) -> list[EventReader]:
    """``count`` consoles, each connected and answered before this returns."""
    readers = [EventReader(port, cookie) for _ in range(count)]
    for reader in readers:
        reader.start()
    for reader in readers:
        if not reader.first.wait(10):
            raise RuntimeError("GET /events did not answer within 10 s")
    return readers


def _config(work: Path, settings: Settings, model: ResolvedModel, broker: LocalBroker,
            web_port: int, http_port: int) -> Path:
    (work / "temp").write_text("51000\n")  # a cool SoC: throttling stays out of the figures
    lines = [*service_lines("bench-console", work, settings, model, broker, work / "temp"),
             "api:", f"  web: {{listen: '127.0.0.1:{web_port}'}}",
             f"  http: {{listen: '127.0.0.1:{http_port}'}}"]
    config = work / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _set_password(config: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "appliance", "--config", str(config),
                           "console", "password", "--stdin"], input=PASSWORD + "\n",
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"appliance console password: {done.stderr.strip()}")


def _login(client: httpx.Client, url: str) -> str:
    """Log in as the login page does; the session cookie as a ``Cookie`` header value.

    The form's page sets the pre-session CSRF cookie and carries the same token,
    which the post sends back in ``X-CSRF-Token``.
    """
    page = client.get(f"{url}/login", headers={"Accept": "text/html"})
    page.raise_for_status()
    token = _FORM_TOKEN.search(page.text)
    if token is None:
        raise RuntimeError("the login page carries no form token")
    answer = client.post(f"{url}/login", json={"password": PASSWORD},
                         headers={"Origin": url, "X-CSRF-Token": token.group(1)})
    answer.raise_for_status()
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


def first_load(client: httpx.Client, url: str) -> tuple[tuple[str, int], ...]:
    """The Overview and what it links, with each file's bytes on the wire (gzip accepted)."""
    headers = {"Accept-Encoding": "gzip"}
    page = client.get(f"{url}/", headers=headers)
    page.raise_for_status()
    files = [("overview (HTML)", page.num_bytes_downloaded)]
    for name in dict.fromkeys(_LINKED.findall(page.text)):
        asset = client.get(f"{url}/{name}", headers=headers)
        asset.raise_for_status()
        files.append((name, asset.num_bytes_downloaded))
    return tuple(files)


def _ask(client: httpx.Client, url: str, model: str, question: str, max_tokens: int) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "stream": False, "options": {"num_predict": max_tokens}}
    client.post(f"{url}/api/chat", json=body).raise_for_status()
    time.sleep(SETTLE_S)


def run_console_bench(settings: Settings, model: ResolvedModel, *, consoles: int = 3,
                      window_s: float = 30.0, rounds: int = 4,
                      max_tokens: int = 64) -> ConsoleBench:
    """Measure a private ``appliance run``'s console; the model comes from ``settings``."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        web_port, http_port = free_port(), free_port()
        config = _config(work, settings, model, broker, web_port, http_port)
        log = work / "run.log"
        proc: subprocess.Popen[bytes] | None = None
        try:
            _set_password(config)
            proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config",
                                     str(config), "run"], stdout=subprocess.DEVNULL,
                                    stderr=log.open("wb"))
            api, web = f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{web_port}"
            wait_ready(api, proc, log)
            with httpx.Client(timeout=300) as client:
                cookie = _login(client, web)
                loaded = first_load(client, web)
                idle, live, events = _cpu(proc.pid, web_port, cookie, consoles, window_s)
                before = len(worker_generations(log))
                alone, watched = _rates(client, api, web_port, cookie, consoles, model.name,
                                        rounds, max_tokens)
            rates = [rate for _ttft, rate in worker_generations(log)[before:]]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            broker.stop()
    if len(rates) != 1 + len(alone) + len(watched):  # the warm-up's first
        raise RuntimeError(f"{1 + len(alone) + len(watched)} questions, but appliance run "
                           f"logged {len(rates)} generations")
    return ConsoleBench(first_load=loaded, consoles=consoles, window_s=window_s,
                        idle_cpu_s=idle, live_cpu_s=live, events=events,
                        rates_alone=tuple(rates[i] for i in alone),
                        rates_watched=tuple(rates[i] for i in watched), max_tokens=max_tokens)


def _cpu(pid: int, port: int, cookie: str, consoles: int,
         window_s: float) -> tuple[float, float, int]:
    """The supervisor's CPU seconds over ``window_s`` with none open, then with ``consoles``."""
    start = cpu_seconds(pid)
    time.sleep(window_s)
    idle = cpu_seconds(pid) - start
    readers = open_consoles(port, cookie, consoles)
    try:
        start = cpu_seconds(pid)
        time.sleep(window_s)
        live = cpu_seconds(pid) - start
    finally:
        for reader in readers:
            reader.close()
    return idle, live, sum(r.events for r in readers)


def _rates(client: httpx.Client, api: str, port: int, cookie: str, consoles: int,
           model: str, rounds: int, max_tokens: int) -> tuple[list[int], list[int]]:
    """Ask ``rounds`` x len(QUESTIONS) pairs; which generations (by order) had consoles open.

    The two lists are aligned: the ``i``-th of each is the ``i``-th pair.
    """
    _ask(client, api, model, QUESTIONS[0], max_tokens)  # warm up (and count it as neither)
    alone: list[int] = []
    watched: list[int] = []
    asked = 1
    for pair in range(rounds * len(QUESTIONS)):
        for open_side in ((False, True) if pair % 2 == 0 else (True, False)):
            readers = open_consoles(port, cookie, consoles) if open_side else []
            try:
                question = QUESTIONS[pair % len(QUESTIONS)]
                _ask(client, api, model, f"{question} (#{asked})", max_tokens)
                (watched if open_side else alone).append(asked)
                asked += 1
            finally:
                for reader in readers:
                    reader.close()
    return alone, watched

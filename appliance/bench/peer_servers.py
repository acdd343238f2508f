"""The servers ``appliance bench peers`` compares: started alike, awaited, stopped.

Every server is given the same model file, ``n_ctx`` and threads (:class:`Setup`), so
that what differs is the server alone:

* **us**: a private ``appliance run`` with the OpenAI API on a loopback port, once
  with ``llm.parallel: 1`` and once with ``4``;
* **llama-server**: llama.cpp's native server (:mod:`appliance.bench.llama_server`),
  ``--parallel 1`` and ``--parallel 4``, with ``-c n_ctx x parallel`` so that each
  slot holds ``n_ctx`` as each of our sequences does;
* **llama_cpp.server**: llama-cpp-python's Python server.

All are started before any is awaited (:func:`start_peer`, then :func:`wait_for_peer`),
so their models load side by side; a server is ready once it lists its model, which
the requests then name.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from appliance.bench.api import wait_ready
from appliance.bench.broker import LocalBroker, free_port
from appliance.bench.private_run import stop_process
from appliance.errors import ApplianceError

OURS, NATIVE, PYTHON = "us", "llama-server", "llama_cpp.server"
READY_S = 300.0


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


def start_peer(peer: Peer, setup: Setup, work: Path, native: Path | None,
               broker: LocalBroker | None) -> None:
    """Start ``peer`` with ``setup``, its stderr to a log in ``work``; do not wait for it."""
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


def wait_for_peer(peer: Peer) -> None:
    """Wait until ``peer`` lists its model (and the native one is healthy); note its id."""
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

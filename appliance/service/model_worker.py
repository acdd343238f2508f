"""The supervisor's side of the model worker: start it, restart it, talk to it.

:class:`ModelWorker` keeps one worker process alive with exponential backoff
(1 s doubling to 60 s, reset after a minute of health), and turns the JSON-lines
protocol of :mod:`appliance.service.worker` into awaitable generations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, ModelError
from appliance.llm import ChatRequest, Chunk, Completion
from appliance.logs import get_logger

log = get_logger("model_worker")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_RESET_S = 60.0
PING_INTERVAL_S = 5.0


class WorkerCrashed(ModelError):
    """The worker process died while a request was running."""


class GenerationFailed(ModelError):
    """The worker refused or could not finish a request; the message says why."""


class _Pending:
    def __init__(self, on_chunk: Callable[[Chunk], None] | None) -> None:
        self.on_chunk = on_chunk
        self.future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()


class ModelWorker:
    """One model worker process, supervised.

    ``command`` starts the worker (by default ``python -m appliance.service.worker CONFIG``).
    """

    def __init__(self, config: Path | None, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "appliance.service.worker",
                                   *([str(config)] if config else [])]
        self.model = ""
        self.restarts = 0
        self.ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[str, _Pending] = {}
        self._last_pong = 0.0
        self._budget: int | None = None
        self._stopping = False

    @property
    def healthy(self) -> bool:
        """Loaded, running, and answering pings."""
        return (self.ready.is_set() and self._proc is not None
                and self._proc.returncode is None
                and time.monotonic() - self._last_pong < 3 * PING_INTERVAL_S)

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
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _run_once(self) -> None:
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 20)
        log.info("worker_started", pid=proc.pid)
        pinger = asyncio.create_task(self._ping_forever())
        try:
            assert proc.stdout is not None
            async for line in proc.stdout:
                try:
                    self._on_event(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:  # a worker bug: restart it
                    log.error("worker_protocol_error", error=str(exc), line=line[:200])
                    proc.kill()
        finally:
            pinger.cancel()
            code = await proc.wait()
            self.ready.clear()
            self._fail_all(WorkerCrashed(f"the model worker exited with code {code}"))
            if not self._stopping:
                log.error("worker_exited", code=code, pid=proc.pid)

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            self._send({"op": "ping"})

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("ev")
        if kind == "chunk":
            pending = self._pending.get(event["request_id"])
            if pending is not None and pending.on_chunk is not None:
                pending.on_chunk(Chunk(event["request_id"], event["seq"], event["delta"]))
        elif kind == "done":
            completion = Completion(**event["completion"])
            self._resolve(completion.id, completion)
        elif kind == "failed":
            self._resolve(event["id"], GenerationFailed(event["error"]))
        elif kind == "pong":
            self._last_pong = time.monotonic()
        elif kind == "ready":
            self.model = event["model"]
            self._last_pong = time.monotonic()
            if self._budget is not None:
                self._send({"op": "budget", "tokens": self._budget})
            self.ready.set()
            log.info("worker_ready", model=self.model)
        elif kind == "fatal":
            log.error("worker_fatal", error=event["error"])

    def _resolve(self, request_id: str, outcome: Completion | ApplianceError) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None or pending.future.done():
            return
        if isinstance(outcome, Completion):
            pending.future.set_result(outcome)
        else:
            pending.future.set_exception(outcome)

    def _fail_all(self, error: ApplianceError) -> None:
        for request_id in list(self._pending):
            self._resolve(request_id, error)

    def _send(self, command: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError):
            proc.stdin.write((json.dumps(command) + "\n").encode())

    async def generate(self, request: ChatRequest,
                       on_chunk: Callable[[Chunk], None] | None = None) -> Completion:
        """Run ``request`` on the worker; raises :class:`WorkerCrashed` if it dies meanwhile."""
        await self.ready.wait()
        pending = _Pending(on_chunk)
        self._pending[request.id] = pending
        self._send({"op": "generate", "request": asdict(request)})
        return await pending.future

    def cancel(self, request_id: str) -> None:
        """Cancel a running or submitted request; its generation ends with ``cancelled``."""
        self._send({"op": "cancel", "id": request_id})

    def set_budget(self, tokens: int | None) -> None:
        """The live token budget (``None``: no limit beyond each request's own)."""
        self._budget = tokens
        self._send({"op": "budget", "tokens": tokens})

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

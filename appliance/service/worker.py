"""The model worker: a child process that owns the engine.

A llama.cpp crash or the OOM killer takes this process, never the supervisor.
It speaks JSON lines: commands on stdin, events on a private copy of stdout
(the real stdout is pointed at stderr so that nothing native can corrupt the
protocol).

Commands: ``{"op": "generate", "request": {...}}``, ``{"op": "cancel", "id"}``,
``{"op": "budget", "tokens": N | null}``, ``{"op": "ping"}``.
Events: ``{"ev": "ready", "model"}``, ``{"ev": "chunk", "id", "seq", "delta"}``,
``{"ev": "done", "completion": {...}}``, ``{"ev": "failed", "id", "error"}``,
``{"ev": "pong"}``.

Run as ``python -m appliance.service.worker [CONFIG]``.

The engine is loaded and driven from the main thread only; a reader thread
takes the commands. llama.cpp's OpenMP thread team belongs to the thread
that first computes, and generating from another thread measured 40 % slower.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import sys
import threading
from typing import Any, TextIO

from appliance import logs
from appliance.catalog import resolve_llm
from appliance.config import load_settings
from appliance.errors import ApplianceError
from appliance.llm import ChatRequest, Engine
from appliance.llm.batching import ChunkBatcher


class _Worker:
    def __init__(self, engine: Engine, out: TextIO, stream_interval_s: float) -> None:
        self.engine = engine
        self.stream_interval_s = stream_interval_s
        self.out = out
        self.out_lock = threading.Lock()
        self.jobs: queue.Queue[ChatRequest | None] = queue.Queue()
        self.budget: int | None = None
        self.cancels: dict[str, threading.Event] = {}

    def send(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False)
        with self.out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def generate_forever(self) -> None:
        while (request := self.jobs.get()) is not None:
            cancel = self.cancels.setdefault(request.id, threading.Event())
            batcher = ChunkBatcher(
                lambda c: self.send({"ev": "chunk", **dataclasses.asdict(c)}),
                self.stream_interval_s)
            try:
                result = self.engine.complete(
                    request, cancel=cancel, on_chunk=batcher.add,
                    budget=lambda: self.budget if self.budget is not None else 1 << 30)
                batcher.flush()
                self.send({"ev": "done", "completion": dataclasses.asdict(result)})
            except ApplianceError as exc:
                self.send({"ev": "failed", "id": request.id, "error": str(exc)})
            finally:
                self.cancels.pop(request.id, None)

    def read_commands(self, stream: TextIO) -> None:
        for line in stream:
            self.handle(json.loads(line))
        for event in list(self.cancels.values()):
            event.set()
        self.jobs.put(None)

    def handle(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        if op == "generate":
            request = ChatRequest(**command["request"])
            self.cancels[request.id] = threading.Event()
            self.jobs.put(request)
        elif op == "cancel":
            event = self.cancels.get(command["id"])
            if event is not None:
                event.set()
        elif op == "budget":
            self.budget = command["tokens"]
        elif op == "ping":
            self.send({"ev": "pong"})


def main(argv: list[str] | None = None) -> int:
    """Load the model named by the config and serve commands until stdin closes."""
    argv = sys.argv[1:] if argv is None else argv
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        settings = load_settings(argv[0] if argv else None)
        logs.configure(settings.log.level, settings.log.format)
        engine = Engine(settings.llm, resolve_llm(settings))
        engine.warm_up()
    except ApplianceError as exc:
        out.write(json.dumps({"ev": "fatal", "error": str(exc)}) + "\n")
        out.flush()
        return exc.exit_code
    worker = _Worker(engine, out, settings.llm.stream_interval_ms / 1000)
    reader = threading.Thread(target=worker.read_commands, args=(sys.stdin,), name="commands",
                              daemon=True)
    reader.start()
    worker.send({"ev": "ready", "model": engine.model_name})
    worker.generate_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

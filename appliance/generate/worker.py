"""The model worker: a child process that owns the engine.

A llama.cpp crash or the OOM killer takes this process, never the supervisor.
It speaks the typed JSON lines of :mod:`appliance.protocol.worker_pipe`:
commands on stdin, events on a private copy of stdout (the real stdout is
pointed at stderr so that nothing native can corrupt the protocol).

Run as ``python -m appliance.generate.worker [CONFIG]``. It ignores SIGTERM and
SIGINT, which reach the whole process group on a stop: it ends when its stdin
closes, which the supervisor does once the running answer is done.

The engine is loaded and driven from the main thread only; a reader thread
takes the commands. llama.cpp's OpenMP thread team belongs to the thread
that first computes, and generating from another thread measured 40 % slower.
While idle, the main thread reads the latest :class:`Prefill` (the question
as heard so far); a real request stops it between two small batches.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from appliance import logs
from appliance.catalog import resolve_llm
from appliance.config import load_settings
from appliance.errors import ApplianceError
from appliance.hardware import cap_malloc_arenas, return_large_buffers
from appliance.llm import ChatRequest
from appliance.llm.adapter_files import resolve_adapters
from appliance.llm.batching import ChunkBatcher
from appliance.llm.engine import Engine
from appliance.llm.kv_disk import conversation_cache, passage_cache
from appliance.llm.together import Outcome
from appliance.protocol import worker_pipe as pipe

log = logs.get_logger("worker")


class _Worker:
    def __init__(self, engine: Engine, out: TextIO, stream_interval_s: float) -> None:
        self.engine = engine
        self.stream_interval_s = stream_interval_s
        self.out = out
        self.out_lock = threading.Lock()
        self.jobs: queue.Queue[pipe.Generate | pipe.Prefill | None] = queue.Queue()
        self.budget: int | None = None
        self.thinking = 1.0  # the thermal share of a thinking model's budget
        self.cancels: dict[str, threading.Event] = {}

    def send(self, message: pipe.Message) -> None:
        line = pipe.encode(message)
        with self.out_lock:
            self.out.write(line)
            self.out.flush()

    def serve(self) -> None:
        """Generate jobs; prefill a partial question only when nothing else waits or runs.

        With ``llm.parallel`` above 1, jobs are submitted to the engine as they
        come and decoded together, one step at a time, between which new jobs
        are taken; otherwise they are answered one after another, in order.
        """
        together = self.engine.together
        while True:
            if together is not None and together.busy:
                if not self._take_jobs():
                    self._drain()
                    return
                together.step()
                continue
            job = self.jobs.get()
            if job is None:
                return
            if isinstance(job, pipe.Generate):
                if together is not None:
                    self._submit(job.request)
                else:
                    self._generate(job.request)
            elif self.jobs.empty():  # a newer prefill or a real request makes this one moot
                self._prefill(job.request)

    def _take_jobs(self) -> bool:
        """Submit the requests that came meanwhile; ``False`` once stdin has closed."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            if isinstance(job, pipe.Generate):
                self._submit(job.request)

    def _drain(self) -> None:
        """Stdin closed (every answer was cancelled): step until each has said so."""
        together = self.engine.together
        while together is not None and together.busy:
            together.step()

    def _reporter(self, request: ChatRequest,
                  ) -> tuple[ChunkBatcher, Callable[[Outcome], None], threading.Event]:
        """What an answer streams to, what reports its end, and its cancel."""
        cancel = self.cancels.setdefault(request.id, threading.Event())
        batcher = ChunkBatcher(
            lambda c: self.send(pipe.ChunkEvent(c.request_id, c.seq, c.delta)),
            self.stream_interval_s)

        def done(outcome: Outcome) -> None:
            self.cancels.pop(request.id, None)
            if isinstance(outcome, ApplianceError):
                self.send(pipe.Failed(request.id, str(outcome), outcome.code))
            else:
                batcher.flush()
                self.send(pipe.Done(outcome))

        return batcher, done, cancel

    def _generate(self, request: ChatRequest) -> None:
        batcher, done, cancel = self._reporter(request)
        try:
            done(self.engine.complete(request, cancel=cancel, on_chunk=batcher.add,
                                      budget=self._budget, thinking_share=self._share))
        except ApplianceError as exc:
            done(exc)

    def _submit(self, request: ChatRequest) -> None:
        batcher, done, cancel = self._reporter(request)
        assert self.engine.together is not None
        self.engine.together.submit(request, done, cancel=cancel, on_chunk=batcher.add,
                                    budget=self._budget, thinking_share=self._share)

    def _budget(self) -> int:
        return self.budget if self.budget is not None else 1 << 30

    def _share(self) -> float:
        return self.thinking

    def _prefill(self, request: ChatRequest) -> None:
        try:
            in_cache, evaluated = self.engine.prefill(request, pending=self._busy)
        except ApplianceError as exc:
            log.warning("prefill_failed", error=str(exc))
            return
        self.send(pipe.Prefilled(request.id, in_cache, evaluated, request.text))

    def _busy(self) -> bool:
        """Real work (or a newer prefill) is waiting."""
        return not self.jobs.empty()

    def read_commands(self, stream: TextIO) -> None:
        for line in stream:
            try:
                self.handle(pipe.decode(line))
            except pipe.ProtocolError as exc:
                log.error("bad_command", error=str(exc))
        for event in list(self.cancels.values()):
            event.set()
        self.jobs.put(None)

    def handle(self, command: pipe.Message) -> None:
        if isinstance(command, pipe.Generate):
            self.cancels[command.request.id] = threading.Event()
            self.jobs.put(command)
        elif isinstance(command, pipe.Prefill):
            self.jobs.put(command)
        elif isinstance(command, pipe.Cancel):
            event = self.cancels.get(command.id)
            if event is not None:
                event.set()
        elif isinstance(command, pipe.Budget):
            self.budget, self.thinking = command.tokens, command.thinking
            self.engine.set_parallel(command.parallel)
        elif isinstance(command, pipe.Threads):
            self.engine.set_threads(command.n_threads, command.n_threads_batch)
        elif isinstance(command, pipe.Ping):
            self.send(pipe.Pong())


def main(argv: list[str] | None = None) -> int:
    """Load the model named by the config and serve commands until stdin closes."""
    argv = sys.argv[1:] if argv is None else argv
    # systemd's SIGTERM (and a terminal's Ctrl-C) reach the whole group: the supervisor
    # stops us by closing stdin, after the running answer is finished, not before.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    cap_malloc_arenas()  # before the model and its threads allocate
    return_large_buffers()
    try:
        settings = load_settings(argv[0] if argv else None)
        logs.configure(settings.log.level, settings.log.format)
        model = resolve_llm(settings)
        engine = Engine(settings.llm, model, passage_cache(settings, model.path),
                        resolve_adapters(settings),  # every LoRA adapter, loaded once
                        conversation_cache(settings, model.path))
        engine.warm_up()
    except ApplianceError as exc:
        out.write(pipe.encode(pipe.Fatal(str(exc))))
        out.flush()
        return exc.exit_code
    worker = _Worker(engine, out, settings.llm.stream_interval_ms / 1000)
    engine.governor.on_change = lambda n, reason: worker.send(  # contention: tell the supervisor
        pipe.ThreadsChanged(n, reason))
    reader = threading.Thread(target=worker.read_commands, args=(sys.stdin,), name="commands",
                              daemon=True)
    reader.start()
    worker.send(pipe.Ready(engine.model_name, engine.threads[0]))
    worker.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Requests decoded together: they wait by urgency, start into lanes, and report when done.

With ``llm.parallel`` above 1 the model worker does not answer one request and
then the next: it :meth:`Together.submit`-s each as it comes, and calls
:meth:`Together.step` in a loop. Each step starts the most urgent waiting
request if a lane is free for it (or if it may overtake: a spoken question over
HTTP answers), then advances every running answer by one decode
(:class:`~appliance.llm.lanes.Lanes`), and reports each answer that ended to its
``on_done``. The engine prepares and finishes each answer as it does alone
(:meth:`Engine.begin <appliance.llm.engine.Engine.begin>`, :meth:`Engine.end
<appliance.llm.engine.Engine.end>`); only the decoding is shared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError, ModelError
from appliance.llm.answering import Budget
from appliance.llm.decoding import Decoder
from appliance.llm.lanes import Lane, Lanes
from appliance.llm.thought import Share
from appliance.llm.types import ChatRequest, Completion, OnChunk
from appliance.logs import bind_request

if TYPE_CHECKING:
    from appliance.llm.engine import Engine

Outcome = Completion | ApplianceError
"""How a submitted request ended: its completion, or the error that ended it."""


@dataclass(frozen=True)
class Submitted:
    """A submitted request, with what its answer reports to (see :meth:`Engine.complete`)."""

    request: ChatRequest
    on_done: Callable[[Outcome], None]
    on_chunk: OnChunk | None
    cancel: threading.Event | None
    budget: Budget | None
    thinking_share: Share | None


class Together:
    """The requests submitted to ``engine``, decoded in ``lanes``; driven from one thread."""

    def __init__(self, engine: Engine, lanes: Lanes) -> None:
        self.engine = engine
        self.lanes = lanes
        self._waiting: list[Submitted] = []
        self._running: dict[int, Submitted] = {}  # by id() of the running Answering

    @property
    def busy(self) -> bool:
        """Submitted requests wait or run."""
        return bool(self._waiting) or bool(self.lanes)

    def submit(self, request: ChatRequest, on_done: Callable[[Outcome], None], *,
               on_chunk: OnChunk | None = None, cancel: threading.Event | None = None,
               budget: Budget | None = None, thinking_share: Share | None = None) -> None:
        """Queue ``request``; ``on_done`` gets its completion, or the error that ended it."""
        self._waiting.append(Submitted(request, on_done, on_chunk, cancel, budget,
                                       thinking_share))
        self._waiting.sort(key=lambda job: job.request.priority)

    def step(self) -> None:
        """Start a waiting request if it may start, then advance every running one."""
        engine, lanes = self.engine, self.lanes
        with engine.lock:
            engine.apply_threads()
            self._admit()
            started = time.monotonic()
            stepped = 0
            try:
                stepped = lanes.step()
            except ModelError as exc:  # the KV cache is full: end what runs, with the reason
                for lane in lanes.fail_all():
                    lane.answering.decoder.finish()
                    self._running.pop(id(lane.answering)).on_done(exc)
            if stepped:
                engine.governor.observe(engine.threads[0], time.monotonic() - started,
                                        batch=stepped)  # contention
            for lane in lanes.ended():
                self._finish(lane)

    def _admit(self) -> None:
        """Start the most urgent waiting request, if a lane is free or it may overtake.

        Its prompt is read at home while the running answers ride along; a request
        under another LoRA adapter waits until none runs. A waiting request that
        was cancelled is answered at once.
        """
        engine, lanes = self.engine, self.lanes
        for job in [job for job in self._waiting if job.cancel is not None and job.cancel.is_set()]:
            self._waiting.remove(job)
            now = time.monotonic()
            job.on_done(engine.result(job.request, Decoder.empty(), "cancelled", now, now, 0, 0, 0))
        if not self._waiting:
            return
        job = self._waiting[0]
        if not lanes.may_overtake(job.request.priority) or (
                len(lanes) and job.request.adapter != engine.adapters.active):
            return
        self._waiting.pop(0)
        with bind_request(job.request.id):
            try:
                answering = engine.begin(job.request, job.on_chunk, job.cancel, job.budget,
                                         job.thinking_share)
                if isinstance(answering, Completion):
                    job.on_done(answering)
                elif answering.start():
                    job.on_done(engine.end(answering))
                else:
                    self._running[id(answering)] = job
                    lanes.add(answering)
            except ApplianceError as exc:
                job.on_done(exc)

    def _finish(self, lane: Lane) -> None:
        """An answer in a lane ended: its cells become the home's, as alone.

        The next prompt that starts the same way (a follow-up with this answer in
        its history, a conversation's next turn) then reads only what is new.
        """
        engine, answering = self.engine, lane.answering
        job = self._running.pop(id(answering))
        engine.states.evict(engine.llama, lane.cells.tokens())
        self.lanes.release(lane)
        with bind_request(answering.request.id):
            job.on_done(engine.end(answering))

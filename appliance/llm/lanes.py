"""Several answers decoded together: one batch, one ``llama_decode`` per step for all of them.

On a Pi 5 a 3B model is bound by memory bandwidth: one decode step reads every
weight once, whether it advances one sequence or four. :class:`Lanes` keeps up
to ``parallel`` answers in one context, each in a *lane* (a sequence id of its
own over one unified KV cache), and advances every one of them by a token (or a
verified draft) per :meth:`step`.

A new answer's prompt is read in sequence 0, the *home*, by the same code that
reads it when it runs alone (the prefix, passage and conversation caches all
live there), while the running lanes ride along in every batch of it (see
:func:`~appliance.llm.native.evaluate`): a long prompt is read
:data:`RIDING_CHUNK` tokens at a time and never stalls them. Its first token is
sampled there; then its cells are tagged with a lane's id (nothing is copied)
and it is stepped with the others.

More answers than ``parallel`` may run (an urgent one overtakes): only the
``parallel`` most urgent (lowest ``ChatRequest.priority``, then oldest) are
stepped; the others wait, their cells kept, until one ends.
"""

from __future__ import annotations

import itertools
import time

import llama_cpp

from appliance.llm import native
from appliance.llm.answering import Answering
from appliance.llm.cells import LaneCells

RIDING_CHUNK = 32
"""Prompt tokens read per batch while other answers run: a short step for them."""
DRAFT_ROOM = 16
"""Batch room kept per lane for its next token and a prompt-lookup draft."""


class Lane:
    """One answer in a lane of its own; a :class:`~appliance.llm.native.Rider` of the context."""

    def __init__(self, answering: Answering, cells: LaneCells, order: int) -> None:
        self.answering = answering
        self.cells = cells
        self.order = order
        answering.generation.move(cells)

    @property
    def urgency(self) -> tuple[int, int]:
        """Sort key: the most urgent first (priority, then arrival)."""
        return self.answering.request.priority, self.order

    @property
    def done(self) -> bool:
        """The answer has ended."""
        return self.answering.finish is not None

    def board(self, batch: native.Batch) -> None:
        """Add the answer's next tokens to ``batch``."""
        self.answering.generation.board(batch)

    def alight(self) -> None:
        """Sample from the decoded batch and hand the tokens to the answer."""
        self.answering.generation.alight()
        self.answering.take_ready()


class Lanes:
    """The lanes of one context: at most ``parallel`` stepped at a time.

    Lanes are numbered from 1; the context needs ``parallel + 2`` sequence ids
    (the home, ``parallel`` lanes, and one for an overtaking answer).
    """

    def __init__(self, llm: llama_cpp.Llama, parallel: int) -> None:
        self._llm = llm
        self.parallel = parallel
        self.cap: int | None = None  # the heat's: fewer stepped at a time
        self.decode_s = 0.0  # the last step's llama_decode, for the benchmark
        self._batch = native.Batch(llm, llm.n_batch + DRAFT_ROOM * (parallel + 1))
        self._free = list(range(parallel + 1, 0, -1))
        self._lanes: list[Lane] = []
        self._order = itertools.count()
        native.carry_riders(llm, self.stepped, self._batch, RIDING_CHUNK)

    def __len__(self) -> int:
        return len(self._lanes)

    @property
    def width(self) -> int:
        """How many are stepped at a time: ``parallel``, or the heat's cap below it."""
        return min(self.parallel, self.cap or self.parallel)

    @property
    def has_room(self) -> bool:
        """A new answer may start without overtaking anyone."""
        return len(self._lanes) < self.width

    def may_overtake(self, priority: int) -> bool:
        """An answer of ``priority`` may start now, above ``parallel`` if need be."""
        if self.has_room:
            return True
        return len(self._lanes) <= self.parallel and priority < max(
            lane.answering.request.priority for lane in self._lanes)

    def stepped(self) -> list[Lane]:
        """The lanes a step advances: the :attr:`width` most urgent that have not ended."""
        running = sorted((lane for lane in self._lanes if not lane.done),
                         key=lambda lane: lane.urgency)
        return running[: self.width]

    def add(self, answering: Answering) -> Lane:
        """Move an answer whose first token was sampled at home into a lane of its own."""
        lane = Lane(answering, LaneCells(self._llm, self._free.pop()), next(self._order))
        self._lanes.append(lane)
        return lane

    def step(self) -> int:
        """Advance every stepped lane by one decode; how many that was.

        A waiting lane whose answer was cancelled ends.
        """
        running = self.stepped()
        for lane in self._lanes:
            if lane not in running:
                lane.answering.poll()
        if not running:
            return 0
        for lane in running:
            lane.board(self._batch)
        started = time.perf_counter()
        native.decode_or_raise(self._batch)
        self.decode_s = time.perf_counter() - started
        native.set_requires_eval(self._llm, True)  # the home's logits, if live, are gone
        for lane in running:
            lane.alight()
        return len(running)

    def ended(self) -> list[Lane]:
        """Take out the lanes whose answers have ended (their cells stay until freed)."""
        ended = [lane for lane in self._lanes if lane.done]
        self._lanes = [lane for lane in self._lanes if not lane.done]
        return ended

    def release(self, lane: Lane) -> None:
        """Free ``lane``'s sequence id; its cells become the home's (which forgets its own)."""
        lane.cells.home()
        self._free.append(lane.cells.seq)

    def fail_all(self) -> list[Lane]:
        """Take out every lane (a decode failed); their cells are freed."""
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.cells.free()
            self._free.append(lane.cells.seq)
        return lanes

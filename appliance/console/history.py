"""The Overview's charts: a bounded history of temperature, tokens/s, power and queue depth.

Nothing here reads the hardware. The parts that already know a figure hand it
in: :meth:`History.answered` takes each answer's tokens/s (a dispatcher answer
listener), :meth:`History.queue` each queue depth the status reports (a status
listener, so that a burst shorter than a step still shows), and
:meth:`History.tick` takes the temperature and power already held in memory
(the watchdog's and the power monitor's newest readings, as
:class:`~appliance.service.status.Status` and the monitor keep them).

Two rings of fixed length: the last hour at :data:`FINE_STEP_S`, and the last
24 hours at :data:`COARSE_STEP_S`, each point of the coarse ring summarising
the fine points of its step. A fine point holds the newest temperature and
power at its end, the mean speed of the answers that finished in it, and the
deepest the queue was (so that a short queue does not vanish between two
ticks); ``None`` when there was nothing to show (no answer, no meter). A
coarse point holds the means of its fine points, and their deepest queue.
Memory is two deques of at most :data:`POINTS` points each, however long the
appliance runs.

    >>> h = History(clock=lambda: 0.0)
    >>> h.answered(4.0); h.answered(6.0); h.queue(3)
    >>> h.tick(temp_c=60.0, power_w=None, queue_depth=1)
    Point(t=0.0, temp_c=60.0, tokens_per_s=5.0, power_w=None, queue_depth=3)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import astuple, dataclass
from typing import Any, Literal

FINE_STEP_S = 5.0
"""The step of the last hour's ring."""
COARSE_STEP_S = 120.0
"""The step of the last 24 hours' ring."""
POINTS = 720
"""Points per ring: an hour of 5 s steps, a day of 2 min steps."""
SERIES = ("temp_c", "tokens_per_s", "power_w", "queue_depth")
"""The charted figures, in the order of :class:`Point`'s values."""

Span = Literal["hour", "day"]


@dataclass(frozen=True)
class Point:
    """One step of a chart: its wall-clock time (for the axis) and a value per series."""

    t: float
    temp_c: float | None
    tokens_per_s: float | None
    power_w: float | None
    queue_depth: float | None

    def row(self) -> list[float | None]:
        """``[t, temp_c, tokens_per_s, power_w, queue_depth]``, rounded for the wire."""
        return [round(v, 2) if v is not None else None for v in astuple(self)]


class _Step:
    """What one step has seen so far: sums and counts for the means, the queue's maximum."""

    def __init__(self) -> None:
        self.sums = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self.queue_max: float | None = None

    def add(self, index: int, value: float | None) -> None:
        if value is not None:
            self.sums[index] += value
            self.counts[index] += 1

    def add_queue(self, depth: float | None) -> None:
        if depth is not None:
            self.queue_max = depth if self.queue_max is None else max(self.queue_max, depth)

    def mean(self, index: int) -> float | None:
        return self.sums[index] / self.counts[index] if self.counts[index] else None

    def point(self, t: float, temp_c: float | None, power_w: float | None) -> Point:
        return Point(t, temp_c, self.mean(1), power_w, self.queue_max)


class History:
    """The two rings, and the step that is being filled.

    ``clock`` is the wall clock: it only labels points (a chart's axis); steps
    are counted by :meth:`tick` calls, one per :data:`FINE_STEP_S`.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.rings: dict[Span, deque[Point]] = {"hour": deque(maxlen=POINTS),
                                                "day": deque(maxlen=POINTS)}
        self._fine = _Step()
        self._coarse = _Step()
        self._ticks = 0

    def answered(self, tokens_per_s: float) -> None:
        """An answer finished at this speed."""
        self._fine.add(1, tokens_per_s)

    def queue(self, depth: int) -> None:
        """The queue is this deep now."""
        self._fine.add_queue(depth)

    def tick(self, *, temp_c: float | None, power_w: float | None,
             queue_depth: int) -> Point:
        """Close the current fine step with the newest readings; returns its point.

        Every :data:`COARSE_STEP_S` worth of ticks also closes a coarse step
        (see :meth:`coarse_point`).
        """
        step = self._fine
        step.add_queue(queue_depth)
        point = step.point(self.clock(), temp_c, power_w)
        self.rings["hour"].append(point)
        coarse = self._coarse
        coarse.add(0, point.temp_c)
        coarse.add(1, point.tokens_per_s)
        coarse.add(2, point.power_w)
        coarse.add_queue(point.queue_depth)
        self._fine = _Step()
        self._fine.add_queue(queue_depth)  # the queue as it stands carries into the next step
        self._ticks += 1
        return point

    def coarse_point(self) -> Point | None:
        """The day ring's new point, once a coarse step is complete (else ``None``)."""
        if self._ticks < round(COARSE_STEP_S / FINE_STEP_S):
            return None
        step, self._coarse, self._ticks = self._coarse, _Step(), 0
        point = Point(self.clock(), step.mean(0), step.mean(1), step.mean(2), step.queue_max)
        self.rings["day"].append(point)
        return point

    def as_json(self, span: Span) -> dict[str, Any]:
        """One ring for a chart: ``{now, step_s, span_s, series, points: [[t, ...], ...]}``."""
        step = FINE_STEP_S if span == "hour" else COARSE_STEP_S
        return {"span": span, "now": round(self.clock(), 2), "step_s": step,
                "span_s": step * POINTS, "series": list(SERIES),
                "points": [point.row() for point in self.rings[span]]}

"""Decode threads that give way on a busy CPU: :class:`ThreadGovernor`.

llama.cpp's OpenMP threads wait for each other at ggml's barriers. When other
processes (speech, a broker, another model) want the same cores, a decode thread
is descheduled and its partners wait for it: on 2 cores with two busy processes, 2
decode threads fell from 113 to 26 tokens/s while 1 thread kept 46. The governor
watches the time of each decode step and chooses the thread count:

* **It learns the idle step time** of every ``(threads, batch)`` it sees: the
  25th percentile of its first :attr:`Tuning.learn_steps` steps, then of every
  further block of as many, kept when lower (the best seen: a reference learned on
  a busy CPU gets better as soon as the CPU is free). A step of 4 sequences is
  only ever compared with steps of 4 sequences, so batch sizes never look like
  contention. Judgements use each step's *ratio* to its own idle time.
* **Calibration.** Once the idle time at the ceiling is known, one window is
  decoded with a thread fewer (reason ``"probe"``), so that the lower count's time
  is learned too, and so that a CPU that was already busy when the references were
  learned is noticed: when that window is faster, the thread stays off
  (``"contention"``); else it comes back at once. This happens once per count.
* **Down.** When the median ratio of the steps of a window (:attr:`Tuning.window`
  steps) stays above :attr:`Tuning.slow` for :attr:`Tuning.down_after_s`, one thread
  goes (reason ``"contention"``). One slow token is never enough. The first steps at
  the new count (:attr:`Tuning.trial_steps`) are a trial: when they are not faster
  than the two slow windows before, the slowness was not contention (a long context,
  a throttled clock); the thread comes back and that slower time becomes the idle
  reference.
* **Back up.** Below its ceiling, the governor probes one thread more (reason
  ``"probe"``) when the steps at the lower count come much faster than when it
  stepped down (:attr:`Tuning.recovered`: the others are gone), or when the probe's
  back-off has passed (:attr:`Tuning.probe_after_s`, doubled after every failed
  probe up to :attr:`Tuning.probe_max_s`, reset by a good one). A probe holds when
  its steps are faster than at the lower count (or as fast, and near their idle
  time); else the thread goes again. So it does not flap: a steady busy CPU gets a
  probe at 10 s, 30 s, 70 s, 150 s ..., and a steady idle CPU no change at all.
* **The ceiling always wins.** It is the heat's thread count when the thermal
  level sets one (:meth:`cap`), else the configured count; the governor never goes
  above it, and with ``adaptive=False`` it stays at it.

It is pure: no threads, no I/O, time from the injected ``clock``. The engine
calls :meth:`observe` (or a :class:`StepTimer`) after every decode step, with
the threads used for it and the number of sequences it advanced, and applies
:attr:`threads` between two steps. ``on_change(threads, reason)`` runs whenever
either changes (from the caller's thread: the decode loop's, or :meth:`cap`'s).

>>> g = ThreadGovernor(2, clock=lambda: 0.0)
>>> g.threads, g.reason
(2, 'configured')
>>> g.cap(1); (g.threads, g.reason)
(1, 'heat')
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Reason = Literal["configured", "heat", "contention", "probe"]
"""Why the thread count is what it is: the configured count, the heat's cap, fewer for
a busy CPU, or one more on trial."""
Key = tuple[int, int]
"""``(threads, batch)``: steps are only compared with steps of the same key."""
OnChange = Callable[[int, str], None]


@dataclass(frozen=True)
class Tuning:
    """The governor's thresholds (defaults suit 5 to 150 tokens/s)."""

    learn_steps: int = 8
    """Steps of a ``(threads, batch)`` whose 25th percentile is its idle time (then per block)."""
    window: int = 12
    """Steps judged together (their median): one slow token is noise."""
    slow: float = 1.6
    """A window whose median step takes this many times the idle time is slow."""
    faster: float = 0.95
    """A probe holds when its steps take at most this share of the lower count's ..."""
    near_idle: float = 1.4
    """... or are within this of their idle time and no slower than the lower count's."""
    recovered: float = 0.7
    """Steps at a lowered count this share of those when it was lowered: probe at once."""
    down_after_s: float = 1.0
    """Slow windows for at least this long (and two of them) before a thread goes."""
    probe_after_s: float = 10.0
    """The first probe back up comes this long after a step down; doubles per failed probe."""
    probe_max_s: float = 160.0
    """The longest wait between two probes on a CPU that stays busy."""
    gap_s: float = 2.0
    """A pause between two steps longer than this (no answer running) restarts the window."""
    trial_steps: int = 24
    """Steps at a lowered count before it is judged against the count above (noise)."""
    settle_steps: int = 2
    """Steps not judged after a change of count (the thread team reshapes itself)."""


class ThreadGovernor:
    """The decode thread count for a CPU shared with others; see the module's note.

    ``configured``: the count set in ``llm.n_threads`` (or the cores); ``adaptive``:
    whether to leave the ceiling at all (``llm.adaptive_threads``).
    """

    def __init__(self, configured: int, *, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic, tuning: Tuning = Tuning(),
                 on_change: OnChange | None = None) -> None:
        self.configured = max(1, configured)
        self.adaptive = adaptive
        self.tuning = tuning
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._heat: int | None = None
        self._threads = self.configured
        self._mode: Literal["steady", "trial", "lowered", "probe"] = "steady"
        self._idle: dict[Key, float] = {}
        self._learning: dict[Key, list[float]] = {}
        self._window: list[tuple[Key, float]] = []
        self._window_start = 0.0
        self._last_step: float | None = None
        self._skip = 0
        self._slow_since: float | None = None
        self._slow_windows = 0
        self._before: list[tuple[Key, float]] = []  # the window before a change of count
        self._entry: list[tuple[Key, float]] = []  # the first window at a lowered count
        self._backoff = tuning.probe_after_s
        self._probe_at = 0.0
        self._calibrated: set[int] = set()  # counts tried once against the one above
        self._previous: list[tuple[Key, float]] = []  # the window judged before this one
        self._trial: list[tuple[Key, float]] = []  # a trial's steps so far
        self._calibrating = False

    # --- what the engine reads --------------------------------------------------------

    @property
    def ceiling(self) -> int:
        """The most threads allowed: the heat's count, else the configured one."""
        return self._heat or self.configured

    @property
    def threads(self) -> int:
        """The decode threads wanted now (never above :attr:`ceiling`)."""
        return min(self._threads, self.ceiling)

    @property
    def reason(self) -> Reason:
        """Why :attr:`threads` is what it is."""
        if self._mode == "probe" or self._calibrating:
            return "probe"
        if self.threads < self.ceiling:
            return "contention"
        return "heat" if self._heat is not None else "configured"

    def idle_times(self) -> Mapping[Key, float]:
        """The idle step time learned for each ``(threads, batch)``, in seconds."""
        return dict(self._idle)

    def applied(self, wanted: tuple[int, int]) -> tuple[int, int]:
        """``(decode, batch)`` threads to set, given the ones the heat or the config want.

        At the ceiling, both are as wanted; below it (a busy CPU), neither is above
        :attr:`threads`: a prompt's batches wait at the same barriers.
        """
        n = self.threads
        if n >= wanted[0]:
            return wanted
        return n, min(wanted[1], n)

    def steps(self, *, timed: bool = True, batch: int = 1) -> StepTimer:
        """A :class:`StepTimer` for one generation (``timed=False``: it observes nothing)."""
        return StepTimer(self if timed else None, self._clock, batch)

    # --- what changes it --------------------------------------------------------------

    def cap(self, heat: int | None) -> None:
        """The heat's thread count (``None``: the configured count): the ceiling from now on."""
        with self._lock:
            before = self._state()
            self._heat = heat
            if self._mode == "steady" or self._threads >= self.ceiling:
                self._threads = self.ceiling
                self._mode = "steady"
                self._calibrating = False
            self._restart_window(settle=0)
            changed = self._state() != before
        if changed:
            self._announce()

    def observe(self, threads: int, seconds: float, batch: int = 1) -> None:
        """One decode step took ``seconds`` with ``threads``, advancing ``batch`` sequences."""
        if seconds <= 0 or batch < 1 or threads < 1:
            return
        with self._lock:
            before = self._state()
            self._observe((threads, batch), seconds)
            changed = self._state() != before
        if changed:
            self._announce()

    # --- inside -----------------------------------------------------------------------

    def _state(self) -> tuple[int, str]:
        return self.threads, self.reason

    def _announce(self) -> None:
        if self.on_change is not None:
            self.on_change(*self._state())

    def _observe(self, key: Key, seconds: float) -> None:
        now = self._clock()
        self._learn(key, seconds)
        if not self.adaptive:
            return
        if self._last_step is not None and now - self._last_step > self.tuning.gap_s:
            self._restart_window(settle=0)  # a new answer after a pause: judge it afresh
            self._slow_since, self._slow_windows = None, 0
        self._last_step = now
        if key[0] != self.threads:
            return  # a step with a count not (or no longer) ours
        if self._skip > 0:
            self._skip -= 1
            return
        if not self._window:
            self._window_start = now
        self._window.append((key, seconds))
        if len(self._window) >= self.tuning.window:
            self._judge(now)

    def _learn(self, key: Key, seconds: float) -> None:
        block = self._learning.setdefault(key, [])
        block.append(seconds)
        if len(block) >= self.tuning.learn_steps:
            low = _quantile(block, 0.25)
            self._idle[key] = min(low, self._idle.get(key, low))
            block.clear()

    def _judge(self, now: float) -> None:
        t = self.tuning
        window, start = self._window, self._window_start
        self._window = []
        ratios = [s / self._idle[k] for k, s in window if k in self._idle]
        ratio = statistics.median(ratios) if len(ratios) * 2 >= len(window) else None
        previous, self._previous = self._previous, window
        if self._mode == "trial":  # the first windows after a step down
            if len(self._trial) + len(window) < t.trial_steps:
                self._trial += window
                return
            window, self._trial = self._trial + window, []
            calibrating, self._calibrating = self._calibrating, False
            faster = self._faster(window, self._before, t.faster)
            if faster or (faster is None and not calibrating):  # not comparable: keep it
                self._lowered(window, now)
            else:  # fewer threads did not help: not contention. That speed is the new normal.
                for key, slow in ({} if calibrating else _medians(self._before)).items():
                    self._idle[key] = max(self._idle.get(key, slow), slow)
                self._change(+1, "lowered" if self._threads + 1 < self.ceiling else "steady")
            return
        if self._mode == "probe":  # the first window with one thread more
            if self._faster(window, self._before, t.faster) or (
                    ratio is not None and ratio <= t.near_idle
                    and self._faster(window, self._before, 1.0) is not False):
                self._backoff = t.probe_after_s
                if self._threads >= self.ceiling:
                    self._mode = "steady"
                else:
                    self._lowered(window, now)
            else:
                self._backoff = min(self._backoff * 2, t.probe_max_s)
                entry = self._before
                self._change(-1, "lowered")
                self._entry = entry
                self._probe_at = now + self._backoff
            return
        if ratio is not None and ratio > t.slow and self._threads > 1:
            self._slow_since = start if self._slow_since is None else self._slow_since
            self._slow_windows += 1
            if self._slow_windows >= 2 and now - self._slow_since >= t.down_after_s:
                self._calibrated.add(self._threads - 1)
                self._before = previous + window  # the two slow windows
                self._change(-1, "trial")
            return
        self._slow_since, self._slow_windows = None, 0
        below = self._threads - 1
        if below >= 1 and below not in self._calibrated and any(
                k[0] == self._threads for k in self._idle):
            self._calibrated.add(below)
            self._calibrating = True
            self._before = window
            self._change(-1, "trial")
            return
        if self._mode == "lowered" and self._threads < self.ceiling and (
                now >= self._probe_at or self._faster(window, self._entry, t.recovered)):
            self._before = window
            self._change(+1, "probe")

    def _lowered(self, window: list[tuple[Key, float]], now: float) -> None:
        """Settled below the ceiling: remember how fast, and when to probe."""
        self._mode = "lowered"
        self._entry = window
        self._probe_at = now + self._backoff

    def _faster(self, now: list[tuple[Key, float]], then: list[tuple[Key, float]],
                share: float) -> bool | None:
        """The steps of window ``now`` take at most ``share`` of those of window ``then``.

        Each step is first divided by the idle time, at the thread count of ``then``,
        of a step that advanced as many sequences: so windows of any mix of batch
        sizes compare. ``None``: too few steps of a batch size that count knows.
        """
        if not then:
            return None
        count = then[0][0][0]

        def scaled(window: list[tuple[Key, float]]) -> list[float]:
            return [s / self._idle[(count, b)] for (_, b), s in window
                    if (count, b) in self._idle]

        a, b = scaled(now), scaled(then)
        if len(a) < 3 or len(b) < 3:
            return None
        return statistics.median(a) <= share * statistics.median(b)

    def _change(self, step: int, mode: Literal["steady", "trial", "lowered", "probe"]) -> None:
        self._threads = max(1, min(self.ceiling, self._threads + step))
        self._mode = "steady" if self._threads >= self.ceiling and mode != "probe" else mode
        self._slow_since, self._slow_windows = None, 0
        self._restart_window(settle=self.tuning.settle_steps)

    def _restart_window(self, settle: int) -> None:
        self._window, self._previous, self._trial = [], [], []
        self._skip = settle


class StepTimer:
    """Times the steps of one generation: :meth:`tick` after each token, with its threads.

    The first tick only starts the clock (the first token's time is the prompt's).
    """

    def __init__(self, governor: ThreadGovernor | None, clock: Callable[[], float],
                 batch: int = 1) -> None:
        self._governor = governor
        self._clock = clock
        self._batch = batch
        self._last: float | None = None

    def tick(self, threads: int) -> None:
        """A step that used ``threads`` just ended."""
        if self._governor is None:
            return
        now = self._clock()
        if self._last is not None:
            self._governor.observe(threads, now - self._last, self._batch)
        self._last = now


def _quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _medians(window: list[tuple[Key, float]]) -> dict[Key, float]:
    """The median step time of each key in ``window``."""
    by: dict[Key, list[float]] = {}
    for key, seconds in window:
        by.setdefault(key, []).append(seconds)
    return {key: statistics.median(v) for key, v in by.items()}

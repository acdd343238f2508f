"""How test files are shared out among xdist workers: one lane keeps time, the others fill the CPU.

Most test files keep a core busy: a model answering, a fuzz, a browser. Some
play speech to the device and listen to what it says back, at the speed of
the clock. With one worker per core, the CPU sits idle whenever a worker waits
on speech (it was 75% busy on two cores); with a third worker, the speech
tests share the CPU with two busy files, fall behind the clock, and vosk hears
the kiosk's echo or a question late.

So :class:`RealTimeLane` runs one worker more than the cores, and gives the
files in :data:`REAL_TIME` to one of them only, :data:`LANE`, longest first,
then any file. The other workers take every other file, in the collection's
order (longest first), and run at a lower priority (:func:`settle_priority`,
``nice`` :data:`BULK_NICENESS`): the busy files get all the CPU that the
real-time lane leaves idle, and none that it needs. A file that measures the
CPU itself (:data:`ALONE`) runs last and alone: the first worker keeps it until
the others have left.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

LANE = "gw0"
"""The xdist worker that runs the :data:`REAL_TIME` files, at normal priority."""

BULK_NICENESS = 10
"""How much lower the other workers run (their children, the ``appliance run``
processes and brokers they start, inherit it): at 10, a CPU-bound task gets about
a tenth of what a normal one does when both want the same core."""

REAL_TIME = frozenset({
    "tests/test_actions.py",  # a spoken request, a WAV read at the speed of the clock
    "tests/test_api_wyoming.py",  # Wyoming audio in, and a disconnect timed against a story
    "tests/test_compose.py",
    "tests/test_echo.py",  # the kiosk hears itself through a speaker that plays in real time
    "tests/test_faults.py",  # a spoken question with no broker at boot
    "tests/test_gpio.py",
    "tests/test_harden_entrances.py",
    "tests/test_harden_wyoming.py",  # audio read no faster than vosk hears it
    "tests/test_prefill.py",  # partial results while the speech goes on
    "tests/test_speech_out.py",
    "tests/test_voice.py",
    "tests/test_voice_follow_up.py",
    "tests/test_voice_restart.py",
    "tests/test_wake.py",
})
"""Files whose audio runs at the speed of the clock: they play speech to a microphone,
a WAV source or a Wyoming stream, or hear the device speak through a real-time speaker."""


ALONE = frozenset({
    "tests/test_contention.py",  # the engine must see the CPU fall quiet once its load stops
})
"""Files that measure the CPU: they run last, when no other file runs."""


class RealTimeLane(LoadFileScheduling):
    """``--dist loadfile`` in the collection's order, with :data:`REAL_TIME` files on one lane."""

    def _lane(self) -> Any:
        """The lane's worker: :data:`LANE`, or the first one if it is gone (a crashed worker)."""
        return next((node for node in self.nodes if node.gateway.id == LANE), self.nodes[0])

    def _assign_work_unit(self, node: Any) -> None:
        """The lane's next file: a real-time one first; another worker's: any other one.

        Once only :data:`ALONE` files are left, the first worker waits for them and
        the others are let go; it takes them when it is the last one.
        """
        if self.workqueue and all(s in ALONE for s in self.workqueue):
            keeper = self.nodes[0]
            for other in self.nodes:
                if other is not keeper and not other.shutting_down:
                    other.shutdown()  # it ends the tests it has, then leaves (remove_node)
            if node is not keeper or len(self.nodes) > 1:
                return
            scope: str | None = next(iter(self.workqueue))
        else:
            lane = node is self._lane()
            first = [s for s in self.workqueue if lane and s in REAL_TIME]
            scope = next((s for s in [*first, *self.workqueue]
                          if s not in ALONE and (lane or s not in REAL_TIME)), None)
        if scope is None:
            return  # the queue holds only real-time files: this worker waits for the end
        self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)

    def remove_node(self, node: Any) -> str | None:
        """A worker left: the one waiting for the :data:`ALONE` files may now be alone."""
        crashed = super().remove_node(node)
        for other in self.nodes:
            self._reschedule(other)
        return crashed

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        """A test ended: the queue may have emptied, and a waiting worker may be let go."""
        super().mark_test_complete(node, item_index, duration)
        for other in self.nodes:
            if other is not node:
                self._reschedule(other)


def _active(config: pytest.Config) -> bool:
    return config.getoption("dist", None) == "loadfile"


def make_scheduler(config: pytest.Config, log: Any) -> RealTimeLane | None:
    """The scheduler for ``--dist loadfile`` (``None``: xdist's own for the other modes)."""
    return RealTimeLane(config, log) if _active(config) else None


def configure_worker(node: Any) -> None:
    """Tell a worker, as it starts, how much lower to run: none on :data:`LANE`."""
    if _active(node.config):
        node.workerinput["niceness"] = 0 if node.gateway.id == LANE else BULK_NICENESS


def settle_priority(config: pytest.Config) -> None:
    """In a worker, lower this process's priority as :func:`configure_worker` said."""
    niceness = getattr(config, "workerinput", {}).get("niceness", 0)
    if niceness:
        os.nice(niceness)

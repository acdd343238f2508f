"""How the test files are shared out among xdist workers: longest first, CPU-heavy ones capped.

A test file either keeps a core busy (a model answering, a fuzz, a browser) or
mostly waits on real time (speech played in real time, restarts, back-offs).
On two cores, two workers leave a core idle whenever both wait; a third
worker fills it, but three heavy files at once starve the real-time speech
tests, whose audio must keep up with the clock.

So :class:`CappedLoadFile` runs one more worker than there are heavy lanes:
it hands out files longest first, as ``--dist loadfile`` does, except that at
most :data:`HEAVY_LANES` heavy files run at once; a worker that would be the
next one waits, or takes the next light file. ``tests/data/module_profile.txt``
says, per file, how long it ran alone and how many cores it kept busy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

HEAVY_SHARE = 0.75
"""A file that kept at least this many cores busy, alone, is heavy."""

HEAVY_LANES = 2
"""Heavy files that run at once: the cores CI has."""


def _profile(path: Path) -> dict[str, tuple[float, float]]:
    """``module_profile.txt``: each file's seconds alone and cores busy, by its path."""
    rows = (line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#"))
    return {module: (float(seconds), float(cores)) for seconds, cores, module in rows}


PROFILE = _profile(Path(__file__).parent / "data" / "module_profile.txt")


def seconds(module: str) -> float:
    """How long ``module`` ran alone (0 for a file the profile does not know yet)."""
    return PROFILE.get(module, (0.0, 0.0))[0]


def heavy(module: str) -> bool:
    """Whether ``module`` keeps a core busy (a file the profile does not know: yes)."""
    return PROFILE.get(module, (0.0, 1.0))[1] >= HEAVY_SHARE


class CappedLoadFile(LoadFileScheduling):
    """``--dist loadfile`` in the collection's order, with at most ``HEAVY_LANES`` heavy files."""

    def _heavy_elsewhere(self, node: Any) -> int:
        """Heavy files unfinished on the other workers.

        A worker asks for more when its own file is nearly done, and it runs its
        last test only once it has more (or is told to stop): its own file, counted,
        would keep it waiting for ever.
        """
        return sum(1 for worker, work in self.assigned_work.items() if worker is not node
                   for scope, tests in work.items() if heavy(scope) and not all(tests.values()))

    def _assign_work_unit(self, node: Any) -> None:
        """The first file in the queue that keeps the heavy files within their lanes, if any."""
        full = self._heavy_elsewhere(node) >= HEAVY_LANES
        scope = next((s for s in self.workqueue if not (full and heavy(s))), None)
        if scope is None:
            return  # this worker waits: a heavy file ending reschedules every worker
        self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        """A test ended; a file may have ended with it, and a waiting worker may go on."""
        super().mark_test_complete(node, item_index, duration)
        for other in self.nodes:
            if other is not node:
                self._reschedule(other)


def make_scheduler(config: pytest.Config, log: Any) -> CappedLoadFile | None:
    """The scheduler for ``--dist loadfile`` (``None``: xdist's own for the other modes)."""
    return CappedLoadFile(config, log) if config.getvalue("dist") == "loadfile" else None

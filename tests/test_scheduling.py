"""The suite's own xdist scheduler (:mod:`tests.scheduling`), driven with stand-in workers."""

from __future__ import annotations

from types import SimpleNamespace

from tests.scheduling import ALONE, LANE, REAL_TIME, RealTimeLane

COLLECTION = ["tests/test_contention.py::test_quiet", "tests/test_busy.py::test_a",
              "tests/test_busy.py::test_b", "tests/test_echo.py::test_a",
              "tests/test_voice.py::test_a", "tests/test_small.py::test_a",
              "tests/test_other.py::test_a"]


class Worker:
    """What the scheduler uses of an xdist ``WorkerController``."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


class Config:
    """What the scheduler reads of pytest's config: three workers, the collection's order."""

    option = SimpleNamespace(loadscopereorder=False)

    def getvalue(self, name: str) -> list[str]:
        assert name == "tx"
        return ["3*popen"]


def _files(worker: Worker) -> set[str]:
    return {COLLECTION[i].split("::")[0] for i in worker.sent}


def _run_all(scheduler: RealTimeLane, worker: Worker) -> None:
    """The worker ends every test it was sent (one at a time, as it reports them)."""
    done = 0
    while done < len(worker.sent):
        scheduler.mark_test_complete(worker, worker.sent[done])
        done += 1


def test_real_time_files_keep_to_the_lane_and_the_quiet_one_runs_alone() -> None:
    assert {"tests/test_echo.py", "tests/test_voice.py"} <= REAL_TIME
    assert "tests/test_contention.py" in ALONE
    scheduler = RealTimeLane(Config())  # type: ignore[arg-type]
    lane, busy, other = workers = [Worker(LANE), Worker("gw1"), Worker("gw2")]
    for worker in workers:
        scheduler.add_node(worker)  # type: ignore[arg-type]
        scheduler.add_node_collection(worker, COLLECTION)  # type: ignore[arg-type]
    scheduler.schedule()

    assert _files(lane) == {"tests/test_echo.py", "tests/test_voice.py"}  # real-time first
    assert not (_files(busy) | _files(other)) & (REAL_TIME | ALONE)
    for worker in (busy, other, lane):
        _run_all(scheduler, worker)
    # All but the quiet file has run: the lane keeps it, the others are let go.
    assert "tests/test_contention.py" not in _files(lane)
    assert busy.shutting_down and other.shutting_down and not lane.shutting_down
    scheduler.remove_node(busy)  # type: ignore[arg-type]
    assert "tests/test_contention.py" not in _files(lane)  # one other still runs
    scheduler.remove_node(other)  # type: ignore[arg-type]
    assert "tests/test_contention.py" in _files(lane)  # alone now
    assert sorted(i for w in workers for i in w.sent) == list(range(len(COLLECTION)))

"""The contention controller (appliance.llm.contention) on a simulated CPU and a fake clock.

The simulated steps take what this 2-core machine measured with SmolLM2 (2 threads
8 ms and 1 thread 11 ms idle; 38 ms and 20 ms with two busy processes), with noise.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.api.metrics import Metrics
from appliance.catalog import ResolvedModel
from appliance.config.schema import DEFAULT_THERMAL_LEVELS
from appliance.generate.local import ModelWorker
from appliance.hardware import calm_openmp
from appliance.llm import ChatRequest, Chunk
from appliance.llm.contention import ThreadGovernor, Tuning
from appliance.protocol import worker_pipe as pipe
from appliance.service.status import Status
from tests.conftest import ROOT, STORY, make_settings

IDLE = {2: 0.008, 1: 0.011}
BUSY = {2: 0.038, 1: 0.020}


@dataclass
class Cpu:
    """A CPU with a fake clock; each step advances it by the step's time."""

    seed: int = 1
    now: float = 0.0
    busy: bool = False
    slowdown: float = 1.0  # a cause that slows every count alike (not contention)
    spikes: float = 0.03  # share of steps that take 3x (a page fault, a hiccup)
    jitter: float = 0.08
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def step_time(self, threads: int, batch: int) -> float:
        base = (BUSY if self.busy else IDLE)[threads] * (1 + 0.6 * (batch - 1)) * self.slowdown
        spike = 3.0 if self.rng.random() < self.spikes else 1.0
        return base * spike * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


class Run:
    """A governor driven by decode steps on a :class:`Cpu`; records every change."""

    def __init__(self, cpu: Cpu, configured: int = 2, adaptive: bool = True) -> None:
        self.cpu = cpu
        self.changes: list[tuple[float, int, str]] = []
        self.gov = ThreadGovernor(configured, adaptive=adaptive, clock=lambda: cpu.now,
                                  on_change=lambda n, why: self.changes.append((cpu.now, n, why)))
        self.max_seen = self.gov.threads

    def warm_up(self) -> None:
        """Decode until the governor knows both counts; its changes are forgotten."""
        self.decode(3.0)
        assert {k[0] for k in self.gov.idle_times()} >= {1, 2} or self.gov.ceiling < 2
        self.changes.clear()

    def decode(self, seconds: float, batches: tuple[int, ...] = (1,)) -> None:
        """Decode for ``seconds`` of simulated time, at the governor's thread count."""
        end = self.cpu.now + seconds
        while self.cpu.now < end:
            threads, batch = self.gov.threads, self.cpu.rng.choice(batches)
            spent = self.cpu.step_time(threads, batch)
            self.cpu.now += spent
            self.gov.observe(threads, spent, batch)
            self.max_seen = max(self.max_seen, self.gov.threads)

    def until(self, seconds: float, threads: int, batches: tuple[int, ...] = (1,)) -> float:
        """Decode until the governor wants ``threads``; the simulated seconds it took."""
        started = self.cpu.now
        while self.gov.threads != threads:
            assert self.cpu.now - started < seconds, (
                f"still {self.gov.threads} threads ({self.gov.reason}) after {seconds} s; "
                f"changes {self.changes}")
            self.decode(0.05, batches)
        return self.cpu.now - started

    def changes_after(self, t: float) -> list[tuple[float, int, str]]:
        return [c for c in self.changes if c[0] >= t]


def test_it_steps_down_under_sustained_slow_steps_and_back_up_when_they_recover() -> None:
    run = Run(Cpu())
    run.decode(3.0)  # learns both counts: one window with a thread fewer, which is slower
    assert [c[1:] for c in run.changes] == [(1, "probe"), (2, "configured")]
    run.changes.clear()
    run.cpu.busy = True
    took = run.until(5.0, 1)
    assert 0.9 < took < 5.0  # sustained: not on the first slow window
    run.decode(1.0)
    assert (run.gov.threads, run.gov.reason) == (1, "contention")
    run.cpu.busy = False
    run.until(3.0, 2)  # much faster than when it stepped down: a probe at once
    run.decode(1.0)
    assert (run.gov.threads, run.gov.reason) == (2, "configured")
    assert [c[1:] for c in run.changes] == [(1, "contention"), (2, "probe"), (2, "configured")]


def test_one_slow_burst_is_not_contention() -> None:
    run = Run(Cpu())
    run.warm_up()
    run.cpu.busy = True
    run.decode(0.4)  # a few slow tokens: one window at most
    run.cpu.busy = False
    run.decode(30.0)
    assert run.changes == []


def test_a_quiet_minute_of_idle_steps_changes_nothing() -> None:
    for seed in range(5):  # noise: 3 % of steps 3x, 8 % jitter; then much worse
        run = Run(Cpu(seed=seed))
        run.warm_up()
        run.decode(60.0)
        assert run.changes == [] and run.gov.threads == 2, (seed, run.changes)
        rough = Run(Cpu(seed=seed, spikes=0.15, jitter=0.3))
        rough.warm_up()
        rough.decode(60.0)
        assert rough.changes == [], (seed, rough.changes)


def test_a_cpu_busy_from_the_start_is_noticed_and_probed_rarely() -> None:
    run = Run(Cpu(busy=True))  # the idle times are learned on a busy CPU: no ratio is slow
    run.until(3.0, 1)  # but the calibration's window with a thread fewer is faster
    run.decode(1.0)
    assert run.gov.reason == "contention"
    lowered_at = run.cpu.now
    run.decode(300.0)
    probes = [c for c in run.changes_after(lowered_at) if c[2] == "probe"]
    # back-off 10, 20, 40, 80, 160 s: five probes in five minutes, each back down at once
    assert 3 <= len(probes) <= 5, run.changes
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(probes)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert (run.gov.threads, run.gov.reason) == (1, "contention")
    assert not [c for c in run.changes if c[2] == "configured"]  # never settled back at 2
    run.cpu.busy = False
    run.until(3.0, 2)
    run.decode(1.0)
    assert run.gov.reason == "configured"


def test_the_heat_cap_always_wins() -> None:
    run = Run(Cpu())
    run.decode(3.0)
    run.gov.cap(1)
    assert (run.gov.threads, run.gov.reason) == (1, "heat")
    run.max_seen = 1
    run.cpu.busy = True
    run.decode(10.0)
    run.cpu.busy = False
    run.decode(30.0)
    assert run.max_seen == 1 and (run.gov.threads, run.gov.reason) == (1, "heat")
    run.gov.cap(None)  # cooled: back to the configured count
    assert (run.gov.threads, run.gov.reason) == (2, "configured")
    run.cpu.busy = True
    run.until(5.0, 1)
    run.gov.cap(2)  # the heat's count while lowered for contention: still lowered
    assert (run.gov.threads, run.gov.reason) == (1, "contention")
    run.gov.cap(1)
    assert (run.gov.threads, run.gov.reason) == (1, "heat")
    run.max_seen = 1
    run.cpu.busy = False
    run.decode(30.0)
    assert run.max_seen == 1


def test_the_configured_count_is_the_ceiling_and_adaptive_off_stays_there() -> None:
    run = Run(Cpu(), configured=1)
    run.decode(2.0)
    run.cpu.busy = True
    run.decode(20.0)
    run.cpu.busy = False
    run.decode(20.0)
    assert run.max_seen == 1 and run.changes == []
    fixed = Run(Cpu(), adaptive=False)
    fixed.decode(2.0)
    fixed.cpu.busy = True
    fixed.decode(30.0)
    assert fixed.changes == [] and fixed.gov.threads == 2
    assert fixed.gov.applied((2, 4)) == (2, 4)


def test_batch_sizes_do_not_look_like_contention() -> None:
    batches = (1, 2, 3, 4)  # a step of 4 sequences takes 2.8x a step of 1
    run = Run(Cpu())
    run.decode(3.0, batches)
    run.changes.clear()
    run.decode(60.0, batches)
    assert run.changes == [], run.changes
    learned = run.gov.idle_times()
    assert {(2, b) for b in batches} <= set(learned)
    assert learned[(2, 4)] > 2 * learned[(2, 1)]
    run.cpu.busy = True
    run.until(5.0, 1, batches)
    run.cpu.busy = False
    run.until(15.0, 2, batches)
    run.decode(60.0, batches)  # and no flapping back
    assert run.gov.reason == "configured" and run.changes[-1][1:] == (2, "configured")


def test_a_slowdown_fewer_threads_do_not_cure_is_not_contention() -> None:
    """A long context or a throttled clock slows every count alike: one trial, then quiet."""
    run = Run(Cpu())
    run.warm_up()
    run.cpu.slowdown = 2.2
    run.decode(60.0)
    tried = [c[1:] for c in run.changes]
    assert tried in ([], [(1, "contention"), (2, "configured")]), tried
    assert (run.gov.threads, run.gov.reason) == (2, "configured")


def test_fewer_threads_for_a_busy_cpu_cut_the_batch_threads_too() -> None:
    run = Run(Cpu())
    run.decode(2.0)
    assert run.gov.applied((2, 4)) == (2, 4)
    run.cpu.busy = True
    run.until(5.0, 1)
    assert run.gov.applied((2, 4)) == (1, 1)


def test_the_worker_tells_the_supervisor_which_reaches_the_state_and_metrics() -> None:
    event = pipe.ThreadsChanged(1, "contention")
    assert pipe.decode(pipe.encode(event)) == event
    status = Status()
    worker = ModelWorker(None, on_change=lambda: status.update(
        n_threads=worker.n_threads, threads_reason=worker.threads_reason))
    worker._on_event(pipe.Ready("m", 2))
    assert (worker.n_threads, worker.threads_reason) == (2, "configured")
    worker.set_threads(1, None)  # the heat's count, before the worker has applied it
    assert (worker.n_threads, worker.threads_reason) == (1, "heat")
    worker._on_event(pipe.ThreadsChanged(1, "contention"))
    assert (status.n_threads, status.threads_reason) == (1, "contention")
    assert status.as_dict()["threads_reason"] == "contention"
    text = Metrics(status, DEFAULT_THERMAL_LEVELS).render().decode()
    assert 'appliance_decode_threads{reason="contention"} 1.0' in text
    worker._on_event(pipe.Ready("m", 2))  # a restarted worker starts at its configured count
    assert worker.threads_reason == "heat"  # the heat's count is sent to it again


@pytest.mark.slow
def test_the_real_engine_gives_way_to_busy_processes_and_takes_the_thread_back(
        model_path: Path) -> None:
    """SmolLM2 decoding on 2 threads; two busy processes start, then stop.

    Only behaviour is asserted, each with a deadline (in :func:`_scenario`, in a
    process of its own): a thread fewer while they run, both back once they are
    gone, and the engine really decoding with each.
    """
    env = dict(os.environ)
    calm_openmp(env)
    done = subprocess.run(
        [sys.executable, "-c", f"from tests.test_contention import _scenario; "
                               f"_scenario({str(model_path)!r})"],
        cwd=ROOT, env=env, start_new_session=True,
        capture_output=True, text=True, timeout=60, check=False)
    report = done.stdout.strip().splitlines()
    assert done.returncode == 0 and report, done.stderr[-3000:]
    phases = json.loads(report[-1])
    if phases["idle"]["threads"] == [1]:  # right, but then the test cannot show a step down
        pytest.skip(f"the CPU was busy before the test's load began: {phases['idle']}")
    idle, busy, freed = phases["idle"], phases["busy"], phases["freed"]
    assert idle["changes"] == [[1, "probe"], [2, "configured"]] and idle["done"], phases
    assert busy["done"] and busy["changes"][-1] == [1, "contention"], phases
    assert busy["threads"] == [1], phases  # the engine decodes with one
    assert freed["done"] and freed["changes"][-1] == [2, "configured"], phases
    assert freed["threads"] == [2], phases


def _scenario(model_path: str) -> None:
    """Decode through three phases; print what the governor did in each, as JSON.

    idle: until both counts are learned (its calibration: one window on 1 thread);
    busy: two busy processes, until the governor wants 1 thread (8 s at most);
    freed: they are gone, until it is back at 2 (10 s at most). Each phase ends
    with a few tokens decoded, to see the thread count the engine really uses.
    """
    from appliance.llm import Engine

    path = Path(model_path)
    with tempfile.TemporaryDirectory() as data:
        settings = make_settings(path, Path(data), {"n_threads": 2, "max_tokens": 400,
                                                    "n_ctx": 1024})
        engine = Engine(settings.llm, ResolvedModel(path, "smollm2", None))
    changes: list[tuple[int, str]] = []
    engine.governor = ThreadGovernor(2, tuning=Tuning(probe_after_s=2.0, probe_max_s=2.0),
                                     on_change=lambda n, why: changes.append((n, why)))
    used: set[int] = set()

    def decode_until(done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        stop = threading.Event()

        def chunk(_: Chunk) -> None:
            used.add(engine.threads[0])
            if done() or time.monotonic() > deadline:
                stop.set()

        while not stop.is_set():
            engine.complete(ChatRequest(STORY), on_chunk=chunk, cancel=stop)

    def phase(done: Callable[[], bool], seconds: float) -> dict[str, object]:
        changes.clear()
        decode_until(done, seconds)
        used.clear()
        decode_until(lambda: len(used) > 0, 1.0)
        return {"threads": sorted(used), "changes": list(changes), "done": done(),
                "idle_ms": {f"{k[0]}": round(v * 1000, 2)
                            for k, v in engine.governor.idle_times().items()}}

    report = {"idle": phase(lambda: 1 in {k[0] for k in engine.governor.idle_times()}
                            and engine.governor.reason != "probe", 5.0)}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        report["busy"] = phase(lambda: engine.governor.reason == "contention", 8.0)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    report["freed"] = phase(lambda: engine.governor.reason == "configured", 10.0)
    engine.close()
    print(json.dumps(report))


def test_the_bench_takes_turns_and_compares_adaptive_with_the_appliance_as_it_was() -> None:
    """``bench contention``'s rounds, on stand-in sides.

    Each side goes first in turn, every answer is timed and counted on its own
    side, and the ratios name their baseline.
    """
    from appliance.bench.contention import Contender, _condition

    order: list[str] = []

    def side(name: str, rate: float) -> Contender:
        def answer(max_tokens: int) -> float:
            order.append(name)
            return rate
        return Contender(name, answer, lambda: 2)

    governor = ThreadGovernor(2)
    row = _condition("idle", [side("before", 20.0), side("fixed", 40.0),
                              side("adaptive", 50.0)], rounds=3, max_tokens=8,
                     adaptive=governor)
    assert order[:3] == ["before", "fixed", "adaptive"]  # the unmeasured first answers
    assert order[3:] == ["before", "fixed", "adaptive", "fixed", "adaptive", "before",
                         "adaptive", "before", "fixed"]
    assert {name: s.rates for name, s in row.sides.items()} == {
        "before": [20.0] * 3, "fixed": [40.0] * 3, "adaptive": [50.0] * 3}
    assert all(len(s.windows) == 3 and s.threads == [2] * 3 for s in row.sides.values())
    assert (row.ratio("before"), row.ratio("fixed")) == (2.5, 1.25)
    assert row.reasons == [governor.reason] * 3

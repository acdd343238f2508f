"""``appliance bench thermal``: what the watchdog costs, and how fast heat cuts a generation.

* Cost: CPU time per watchdog tick (read, policy, callbacks, the asyncio sleep),
  against a bare read of the same sysfs-style file; as a share of one core at
  ``thermal.interval_s``.
* Reaction: a running generation on the real model worker; the temperature file
  jumps to the emergency level at a random moment; time until the answer comes
  back ``throttled``, against the watchdog interval (target < 1.5 x).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from appliance.catalog import ResolvedModel
from appliance.config import Settings, load_settings
from appliance.config.schema import ThermalLevel
from appliance.generate.local import ModelWorker
from appliance.llm import ChatRequest, Engine
from appliance.power.monitor import PowerMonitor
from appliance.thermal import ThermalWatchdog

STORY = "Tell me a very long story about a dragon, a knight and a castle."
THREAD_QUESTIONS = ("Tell me about the sea.", "Describe a garden in spring.",
                    "Explain how rain forms.")


@dataclass(frozen=True)
class ThreadRow:
    """Decode speed (and energy, where a meter exists) at one thread count."""

    n_threads: int
    tokens_per_s: float
    j_per_token: float | None


async def _thread_table(settings: Settings, model: ResolvedModel,
                        max_tokens: int = 64) -> list[ThreadRow]:
    """Tokens/s (and J/token) of the same greedy answers at 1 thread up to the cores."""
    engine = Engine(replace(settings.llm, temperature=0.0), model)
    monitor = await PowerMonitor.open(settings.power)
    sampler = asyncio.create_task(monitor.run())
    rows = []
    try:
        engine.warm_up()
        for n in range(1, max(engine.default_threads[0], 1) + 1):
            engine.set_threads(n, None)
            rates, joules, tokens = [], 0.0, 0
            for question in THREAD_QUESTIONS:
                mark = monitor.mark()
                done = await asyncio.to_thread(engine.complete, ChatRequest(
                    question, max_tokens=max_tokens))
                rates.append(done.tokens_per_s)
                energy = monitor.since(mark)
                if energy is not None:
                    joules += energy.joules
                    tokens += done.tokens
            rows.append(ThreadRow(n, statistics.median(rates),
                                  joules / tokens if tokens else None))
    finally:
        sampler.cancel()
        engine.close()
    return rows


@dataclass(frozen=True)
class ThermalBench:
    """The figures of one run."""

    tick_cpu_us: float
    bare_read_cpu_us: float
    interval_s: float
    reaction_p50_s: float
    reaction_max_s: float
    threads: list[ThreadRow] = field(default_factory=list)

    @property
    def core_share(self) -> float:
        """Share of one core the watchdog uses at its interval."""
        return self.tick_cpu_us / 1e6 / self.interval_s


async def _tick_cost(settings: Settings, zone: Path, ticks: int) -> tuple[float, float]:
    thermal = dataclasses.replace(settings.thermal, zone_path=zone, interval_s=0.0,
                                  vcgencmd="/nonexistent/vcgencmd")
    dog = ThermalWatchdog(thermal, lambda _level: None)
    started = time.process_time()
    for _ in range(ticks):
        await dog.tick()
        await asyncio.sleep(0)
    ours = (time.process_time() - started) / ticks
    started = time.process_time()
    for _ in range(ticks):
        float(zone.read_text())
    bare = (time.process_time() - started) / ticks
    return ours * 1e6, bare * 1e6


async def _reaction(settings: Settings, config: Path, zone: Path, rounds: int) -> list[float]:
    worker = ModelWorker(config)
    llm_max = settings.llm.max_tokens

    def on_change(level: ThermalLevel) -> None:
        worker.set_budget(level.budget(llm_max))

    dog = ThermalWatchdog(settings.thermal, on_change)
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(dog.run())]
    await worker.ready.wait()
    hottest = settings.thermal.levels[-1].from_c + 1
    delays = []
    for _ in range(rounds):
        zone.write_text("40000\n")
        while dog.index != 0:
            await asyncio.sleep(0.05)
        answer = asyncio.create_task(worker.generate(ChatRequest(STORY, max_tokens=llm_max)))
        await asyncio.sleep(0.3 + random.random() * settings.thermal.interval_s)
        if answer.done():
            raise RuntimeError("the answer ended before the heat step; raise llm.max_tokens")
        zone.write_text(f"{round(hottest * 1000)}\n")
        stepped = time.perf_counter()
        result = await answer
        if result.finish_reason != "throttled":
            raise RuntimeError(f"the answer ended {result.finish_reason}, not throttled")
        delays.append(time.perf_counter() - stepped)
    await worker.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return delays


def run_thermal_bench(settings: Settings, model: ResolvedModel, ticks: int = 20000,
                      rounds: int = 5) -> ThermalBench:
    """Measure on a private temperature file and a real model worker."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        work = Path(tmp)
        zone = work / "temp"
        zone.write_text("40000\n")
        config = work / "config.yaml"
        config.write_text(f"data_dir: {work}\nllm:\n  model_path: {model.path}\n"
                          f"  max_tokens: 2000\n  temperature: 0\n"
                          f"thermal:\n  zone_path: {zone}\n"
                          f"  interval_s: {settings.thermal.interval_s}\n")
        bench_settings = load_settings(config)
        tick, bare = asyncio.run(_tick_cost(bench_settings, zone, ticks))
        delays = asyncio.run(_reaction(bench_settings, config, zone, rounds))
    table = asyncio.run(_thread_table(settings, model))
    return ThermalBench(tick, bare, settings.thermal.interval_s, statistics.median(delays),
                        max(delays), table)

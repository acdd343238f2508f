"""``appliance bench adapters``: what LoRA adapters cost, against the base model in the same run.

Three figures, with adapters shaped like a usual PEFT fine-tune (``q, k, v, o``
projections of every block, :data:`~appliance.bench.lora_files.ATTENTION`),
written for the configured model with random factors:

* **switching**: the time to first token of a one-token answer right after the
  adapter changed, minus the same without a change (both with their system
  prompt cached under their own adapter); and the switch call alone;
* **decoding**: tokens/s of greedy answers with a rank-8 and a rank-32 adapter
  over tokens/s without one, interleaved in each round;
* **memory**: the resident memory of a real model worker
  (``python -m appliance.generate.worker``) once ready with 0, 1 and 4 rank-8
  adapters loaded.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from appliance.bench.lora_files import ATTENTION, LoraSpec, write_lora
from appliance.catalog import ResolvedModel
from appliance.config.schema import Settings
from appliance.hardware import rss_bytes
from appliance.llm import ChatRequest, Engine
from appliance.llm.adapter_files import AdapterFile
from appliance.protocol import worker_pipe as pipe

QUESTIONS = (
    "Tell me about the planets of the solar system.",
    "How do bees make honey?",
    "Describe a walk through a pine forest in autumn.",
    "Explain how a bicycle stays upright.",
)
RANKS = (8, 32)
LOADED = (0, 1, 4)
"""Adapter counts whose worker memory is measured."""


@dataclass(frozen=True)
class AdapterBench:
    """The figures of one run (tokens/s by rank, 0 for the base; worker RSS by adapter count)."""

    switch_ms: float
    switch_call_ms: float
    tokens_per_s: dict[int, float]
    rss_bytes: dict[int, int]

    def speed_ratio(self, rank: int) -> float:
        """Tokens/s with an adapter of ``rank`` over tokens/s without one."""
        return self.tokens_per_s[rank] / self.tokens_per_s[0]


def _adapter(root: Path, model: Path, name: str, rank: int, seed: int) -> AdapterFile:
    spec = LoraSpec(rank=rank, targets=ATTENTION, blocks=None, b_std=0.01, seed=seed)
    return AdapterFile(name, write_lora(root / f"{name}.gguf", model, spec), 1.0, f"bench:{name}")


def run_adapter_bench(settings: Settings, model: ResolvedModel, rounds: int = 3,
                      max_tokens: int = 64) -> AdapterBench:
    """Measure everything on ``model`` with ``settings.llm`` (greedy), in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="appliance-bench-adapters-") as tmp:
        root = Path(tmp)
        files = {f"rank{r}": _adapter(root, model.path, f"rank{r}", r, r) for r in RANKS}
        llm = dataclasses.replace(settings.llm, temperature=0.0, max_tokens=max_tokens,
                                  prefix_cache_entries=8, adapters={}, adapter_for={})
        engine = Engine(llm, model, None, files)
        try:
            switch_ms, call_ms = _switching(engine, rounds)
            rates = _decoding(engine, rounds)
        finally:
            engine.close()
        extra = {f"extra{i}": _adapter(root, model.path, f"extra{i}", 8, 100 + i)
                 for i in range(max(LOADED))}
        rss = {n: _worker_rss(root, settings, model, list(extra.values())[:n]) for n in LOADED}
    return AdapterBench(switch_ms, call_ms, rates, rss)


def _switching(engine: Engine, rounds: int) -> tuple[float, float]:
    """(extra ms to the first token after a switch, ms of the switch call alone)."""
    names = [None, "rank8"]
    for name in names:
        engine.warm_up(adapter=name)
    same: list[float] = []
    switched: list[float] = []
    for r in range(rounds):
        for i, question in enumerate(QUESTIONS):
            # Each question differs from the one before it from its first word, so that all
            # three evaluate their whole question after the cached system prompt.
            adapter = names[(r + i) % 2]
            engine.complete(ChatRequest(f"First: {question}", max_tokens=1, adapter=adapter))
            same.append(engine.complete(ChatRequest(
                f"Next: {question}", max_tokens=1, adapter=adapter)).ttft_ms)
            switched.append(engine.complete(ChatRequest(
                f"Then: {question}", max_tokens=1, adapter=names[(r + i + 1) % 2])).ttft_ms)
    calls = []
    for i in range(20):
        started = time.perf_counter()
        engine.adapters.activate(engine.llama, names[i % 2])
        calls.append((time.perf_counter() - started) * 1000)
    return statistics.median(switched) - statistics.median(same), statistics.median(calls)


def _decoding(engine: Engine, rounds: int) -> dict[int, float]:
    """Median tokens/s by rank (0: no adapter), the variants taking turns to go first."""
    order = [(0, None), *((r, f"rank{r}") for r in RANKS)]
    rates: dict[int, list[float]] = {rank: [] for rank, _ in order}
    for r in range(rounds):
        for i, question in enumerate(QUESTIONS):
            shift = (r + i) % len(order)
            for rank, name in order[shift:] + order[:shift]:
                done = engine.complete(ChatRequest(question, adapter=name))
                if done.tokens > 8:
                    rates[rank].append(done.tokens_per_s)
    return {rank: statistics.median(values) if values else 0.0
            for rank, values in rates.items()}


def _worker_rss(root: Path, settings: Settings, model: ResolvedModel,
                adapters: list[AdapterFile]) -> int:
    """The resident memory of a model worker, once ready, with ``adapters`` loaded."""
    llm = settings.llm
    config = root / f"worker-{len(adapters)}.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(root / "data"),
        "llm": {"model_path": str(model.path), "n_ctx": llm.n_ctx, "n_batch": llm.n_batch,
                **({"n_threads": llm.n_threads} if llm.n_threads else {}),
                "adapters": {a.name: {"path": str(a.path)} for a in adapters}}}))
    worker = subprocess.Popen([sys.executable, "-m", "appliance.generate.worker", str(config)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            event = pipe.decode(line)
            if isinstance(event, pipe.Fatal):
                raise RuntimeError(f"the worker did not start: {event.error}")
            if isinstance(event, pipe.Ready):
                return rss_bytes(worker.pid)
        raise RuntimeError("the worker ended before it was ready")
    finally:
        worker.kill()
        worker.wait()

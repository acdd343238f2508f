"""Time to first token of a knowledge answer with its passage's state from disk, and without.

Warm means restored from disk (as after a restart), not from memory. The
second-passage figure is top_k 2 with the first passage cached: the price of a
second passage is evaluating it.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.bench.manuals import MANUALS, QUESTIONS, add_manuals, load_questions
from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.knowledge.embedding import Embedder
from appliance.knowledge.index import KnowledgeIndex
from appliance.knowledge.retriever import Retriever
from appliance.llm import ChatRequest, Engine
from appliance.llm.kv_disk import DiskKvCache, model_identity
from appliance.service.knowledge_context import passage_text


@dataclass(frozen=True)
class PassageCacheBench:
    """Time to first token with the [system + passage] state from disk, and without."""

    passage_tokens: int
    cached_ttft_ms: float
    uncached_ttft_ms: float
    second_passage_ttft_ms: float

    @property
    def ratio(self) -> float:
        """Cached TTFT as a share of uncached."""
        return self.cached_ttft_ms / self.uncached_ttft_ms


def run_passage_cache_bench(model_path: Path, rounds: int = 3,
                            manuals: Path = MANUALS, questions: Path = QUESTIONS,
                            ) -> PassageCacheBench:
    """The same questions and passages answered from a cold and a warm passage cache."""
    asked = load_questions(questions)[: 4 * rounds]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = KnowledgeIndex(root / "manuals.sqlite3", Embedder())
        add_manuals(index, manuals)
        index.close()
        retriever = Retriever(root / "manuals.sqlite3")
        found = [(q["q"], retriever.search(q["q"], 2)) for q in asked]
        retriever.close()
        disk = DiskKvCache(root / "kv", 1 << 30, model_identity(model_path))
        engine = Engine(LlmSettings(model_path=model_path, temperature=0.0,
                                    prefix_cache_entries=1),
                        ResolvedModel(model_path, model_path.stem, None), disk)
        cold, warm, second, tokens = [], [], [], []
        try:
            engine.warm_up()
            for question, passages in found:
                if len(passages) < 2:
                    continue
                first, other = passage_text(passages[0]), passage_text(passages[1])
                for state in disk.directory.glob("*.kv"):
                    state.unlink()
                engine.warm_up("You are terse.")  # the memory cache holds another prefix now
                done = engine.complete(ChatRequest(question, max_tokens=4, context=(first,)))
                cold.append(done.ttft_ms)
                tokens.append(done.prompt_tokens)
                engine.warm_up("You are terse.")
                warm.append(engine.complete(ChatRequest(question, max_tokens=4,
                                                        context=(first,))).ttft_ms)
                engine.warm_up("You are terse.")
                second.append(engine.complete(ChatRequest(
                    question, max_tokens=4, context=(first, other))).ttft_ms)
        finally:
            engine.close()
    return PassageCacheBench(round(statistics.median(tokens)), statistics.median(warm),
                             statistics.median(cold), statistics.median(second))


def report_passage_cache(r: PassageCacheBench) -> list[str]:
    """The figures as lines for a person."""
    return [f"passage cache  first token with [system + passage] restored from disk "
            f"{r.cached_ttft_ms:7.1f} ms   evaluated {r.uncached_ttft_ms:7.1f} ms   ratio "
            f"{r.ratio:6.1%}  (target <= 25%; prompts of about {r.passage_tokens} tokens)",
            f"               top_k 2 (first passage cached, second evaluated): "
            f"{r.second_passage_ttft_ms:7.1f} ms"]

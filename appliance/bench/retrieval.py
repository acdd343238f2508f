"""``appliance bench knowledge``: retrieval quality and speed of the manuals index.

* Hit rate and refusals (:mod:`~appliance.bench.retrieval_quality`): the question set
  over the test manuals (:mod:`~appliance.bench.manuals`), for the hybrid the appliance
  uses and for each half alone (embeddings only, BM25 only) in the same run; and what
  ``knowledge.min_score`` refuses of the question set and the off-topic set.
* Retrieval latency: ``Retriever.search`` end to end (question embedding, vector scores,
  FTS5 BM25, passage rows) over a generated corpus of ``chunks`` passages; p50 and p99
  (target p50 <= 5 ms at 10,000), the question's embedding alone, and the load average
  (the figures mean little on a busy machine).
* Build rate: ``KnowledgeIndex.add`` of the generated manuals (read, chunk, embed, insert),
  in passages/s and MB/s, and the share spent embedding.
* Token estimate: words x 1.3 against a real tokenizer (the configured model's), if given.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.bench.manuals import (
    MANUALS,
    OFF_TOPIC,
    QUESTIONS,
    add_manuals,
    generate_corpus,
    load_questions,
)
from appliance.bench.retrieval_quality import Refusals, hit_rates, refusals, report_refusals
from appliance.config.schema import KnowledgeSettings
from appliance.knowledge.chunking import approx_tokens
from appliance.knowledge.embedding import Embedder
from appliance.knowledge.index import KnowledgeIndex
from appliance.knowledge.retriever import Retriever


@dataclass(frozen=True)
class KnowledgeBench:
    """The figures of one run."""

    questions: int
    hit3: float
    hit1: float
    hit3_dense: float
    hit3_bm25: float
    misses: tuple[str, ...]
    refusals: Refusals
    chunks: int
    corpus_mb: float
    build_s: float
    embed_share: float
    p50_ms: float
    p99_ms: float
    question_embed_p50_ms: float
    load_average: float
    token_ratio: float | None

    @property
    def chunks_per_s(self) -> float:
        """Index build rate in passages per second."""
        return self.chunks / self.build_s

    @property
    def mb_per_s(self) -> float:
        """Index build rate in MB of source text per second."""
        return self.corpus_mb / self.build_s


class _TimedEmbedder(Embedder):
    """The real embedder, adding up the time it spends."""

    spent = 0.0

    def embed(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return super().embed(texts)
        finally:
            self.spent += time.perf_counter() - started


def _token_ratio(manuals: Path, index: Path, model_path: Path) -> float:
    """Real tokens over estimated tokens, summed over the test manuals' passages."""
    import llama_cpp

    from appliance.llm.native_log import route_native_logs

    route_native_logs()
    native = logging.getLogger("llama.cpp")
    level = native.level
    native.setLevel(logging.CRITICAL)  # a vocabulary-only load warns that it has no context
    try:
        vocab = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    finally:
        native.setLevel(level)
    retriever = Retriever(index, dense_weight=0.0)
    try:
        passages = list(retriever.passages())
    finally:
        retriever.close()
    real = sum(len(vocab.tokenize(p.text.encode(), add_bos=False, special=False))
               for p in passages)
    return real / sum(approx_tokens(p.text) for p in passages)


def run_retrieval_bench(*, chunks: int = 10000, rounds: int = 3, manuals: Path = MANUALS,
                        questions: Path = QUESTIONS, off_topic: Path = OFF_TOPIC,
                        min_score: float | None = KnowledgeSettings().min_score,
                        model_path: Path | None = None,
                        workdir: Path | None = None) -> KnowledgeBench:
    """Measure quality on the test manuals and speed on ``chunks`` generated passages."""
    asked = load_questions(questions)
    unrelated = [str(q) for q in load_questions(off_topic)]
    embedder = _TimedEmbedder()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        small = root / "manuals.sqlite3"
        index = KnowledgeIndex(small, embedder)
        add_manuals(index, manuals)
        index.close()
        rates = {}
        for name, weights in (("hybrid", {}), ("dense", {"bm25_weight": 0.0}),
                              ("bm25", {"dense_weight": 0.0})):
            retriever = Retriever(small, embedder, **weights)
            rates[name] = hit_rates(retriever, asked)
            retriever.close()
        retriever = Retriever(small, embedder)
        refused = refusals(retriever, [q["q"] for q in asked], unrelated, min_score)
        retriever.close()
        ratio = _token_ratio(manuals, small, model_path) if model_path else None

        corpus = root / "corpus"
        corpus.mkdir()
        corpus_mb = generate_corpus(corpus, chunks, manuals)
        big = root / "corpus.sqlite3"
        index = KnowledgeIndex(big, embedder)
        embedder.spent = 0.0
        started = time.perf_counter()
        for path in sorted(corpus.iterdir()):
            index.add(path, max_file_mb=50)
        build_s = time.perf_counter() - started
        embed_share = embedder.spent / build_s
        built = sum(d.chunks for d in index.documents())
        index.close()

        retriever = Retriever(big, embedder)
        retriever.search("warm up", 3)  # loads the vectors once
        latencies, embeds = [], []
        for _ in range(rounds):
            for q in asked:
                started = time.perf_counter()
                retriever.search(q["q"], 3)
                latencies.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                embedder.embed_one(q["q"])
                embeds.append((time.perf_counter() - started) * 1000)
        load = os.getloadavg()[0]
        retriever.close()
    latencies.sort()
    hit3, hit1, misses = rates["hybrid"]
    return KnowledgeBench(
        questions=len(asked), hit3=hit3, hit1=hit1, hit3_dense=rates["dense"][0],
        hit3_bm25=rates["bm25"][0], misses=tuple(misses), refusals=refused, chunks=built,
        corpus_mb=corpus_mb,
        build_s=build_s, embed_share=embed_share, p50_ms=statistics.median(latencies),
        p99_ms=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        question_embed_p50_ms=statistics.median(embeds), load_average=load, token_ratio=ratio)


def report(r: KnowledgeBench) -> list[str]:
    """The figures as lines for a person."""
    lines = [
        f"hit rate   right document and section in the top 3: {r.hit3:.3f} "
        f"({round(r.hit3 * r.questions)}/{r.questions} questions; top 1: {r.hit1:.3f})  "
        "(target >= 0.85)",
        f"           embeddings alone {r.hit3_dense:.3f}   BM25 alone {r.hit3_bm25:.3f}",
        *report_refusals(r.refusals),
        f"retrieval  over {r.chunks} passages: p50 {r.p50_ms:.2f} ms   p99 {r.p99_ms:.2f} ms"
        f"  (target p50 <= 5 ms); the question's embedding alone p50 "
        f"{r.question_embed_p50_ms:.2f} ms",
        f"           (1-minute load average {r.load_average:.1f} on {os.cpu_count()} cores: "
        "other work on the machine slows both)",
        f"build      {r.chunks_per_s:.0f} passages/s   {r.mb_per_s:.3f} MB/s   "
        f"({r.corpus_mb:.1f} MB in {r.build_s:.1f} s, {r.embed_share:.0%} of it embedding)",
    ]
    if r.token_ratio is not None:
        lines.append(f"tokens     real / estimated (words x 1.3): {r.token_ratio:.2f}")
    lines += [f"missed     {q}" for q in r.misses]
    return lines

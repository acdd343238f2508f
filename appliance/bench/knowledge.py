"""``appliance bench knowledge``: retrieval quality and speed of the manuals index.

* Hit rate: the question set (``tests/knowledge_questions.yaml``, phrased in other words
  than the manuals) over the test manuals (``tests/manuals``); a hit is the right document
  and section within the top 3 (target >= 0.85). Measured for the hybrid the appliance
  uses, and for each half alone (embeddings only, BM25 only) in the same run.
* Refusals: the question set and the off-topic set (``tests/knowledge_offtopic.yaml``,
  questions the manuals do not answer) against ``knowledge.min_score``: a question is
  refused (``mode: only``) when its best passage scores under it. Precision is the share
  of refused questions that were off topic, recall the share of off-topic ones refused.
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
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import appliance
from appliance.catalog import ResolvedModel
from appliance.config.schema import KnowledgeSettings, LlmSettings
from appliance.knowledge.chunking import approx_tokens
from appliance.knowledge.embedding import Embedder
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.index import KnowledgeIndex
from appliance.knowledge.retriever import Retriever
from appliance.llm import ChatRequest, Engine
from appliance.llm.kv_disk import DiskKvCache, model_identity
from appliance.service.knowledge_context import passage_text

_TESTS = Path(appliance.__file__).resolve().parent.parent / "tests"
MANUALS = _TESTS / "manuals"
QUESTIONS = _TESTS / "knowledge_questions.yaml"
OFF_TOPIC = _TESTS / "knowledge_offtopic.yaml"
SECTIONS_PER_FILE = 100


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


@dataclass(frozen=True)
class Refusals:
    """What ``min_score`` refuses of the on-topic and the off-topic questions."""

    min_score: float | None
    on_topic: int
    off_topic: int
    on_topic_refused: int
    off_topic_refused: int
    lowest_on_topic: float    # the best passage's score, for the worst-served question
    highest_off_topic: float  # and for the off-topic question that looks most covered

    @property
    def precision(self) -> float | None:
        """Off-topic share of the refused questions (None when none was refused)."""
        refused = self.on_topic_refused + self.off_topic_refused
        return self.off_topic_refused / refused if refused else None

    @property
    def recall(self) -> float:
        """Share of the off-topic questions refused."""
        return self.off_topic_refused / self.off_topic


def refusals(retriever: Retriever, on_topic: list[str], off_topic: list[str],
             min_score: float | None) -> Refusals:
    """Each question's best score against ``min_score``, as ``knowledge.mode: only`` does."""
    def best(question: str) -> float:
        found = retriever.search(question, 1)
        return found[0].score if found else float("-inf")

    on = [best(q) for q in on_topic]
    off = [best(q) for q in off_topic]
    floor = float("-inf") if min_score is None else min_score
    return Refusals(min_score, len(on), len(off), sum(s < floor for s in on),
                    sum(s < floor for s in off), min(on), max(off))


class _TimedEmbedder(Embedder):
    """The real embedder, adding up the time it spends."""

    spent = 0.0

    def embed(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return super().embed(texts)
        finally:
            self.spent += time.perf_counter() - started


def _load_questions(path: Path) -> list[Any]:
    if not path.is_file():
        raise KnowledgeError(f"{path}: the question set is missing; bench knowledge runs in a "
                             "source checkout (tests/knowledge_questions.yaml, tests/manuals)")
    return list(yaml.safe_load(path.read_text()))


def _hit_rates(retriever: Retriever, questions: list[dict[str, str]],
               ) -> tuple[float, float, list[str]]:
    """``(hit@3, hit@1, missed questions)``."""
    hit3 = hit1 = 0
    misses = []
    for q in questions:
        got = [(p.doc, p.section) for p in retriever.search(q["q"], 3)]
        want = (q["doc"], q["section"])
        hit3 += want in got
        hit1 += got[:1] == [want]
        if want not in got:
            misses.append(q["q"])
    return hit3 / len(questions), hit1 / len(questions), misses


def _vocabulary(manuals: Path, rng: random.Random) -> list[str]:
    """The manuals' own words (so questions find matches) and made-up ones (a long tail)."""
    words = sorted({w.lower().strip(".,:;()") for p in manuals.iterdir() if p.suffix != ".py"
                    for w in p.read_text(errors="ignore").split() if w.isascii()})
    syllables = ["ka", "lo", "ve", "tri", "son", "mar", "dex", "pu", "ran", "gel", "fo", "zin"]
    made_up = {"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(20000)}
    return [w for w in words if w.isalpha()] + sorted(made_up)


def generate_corpus(directory: Path, chunks: int, manuals: Path, seed: int = 7) -> float:
    """Write Markdown manuals with ``chunks`` sections of 110 to 200 words; returns MB."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(manuals, rng)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like frequencies
    rng.shuffle(vocabulary)
    size = 0
    for number in range(0, chunks, SECTIONS_PER_FILE):
        lines = [f"# Generated manual {number // SECTIONS_PER_FILE}", ""]
        for section in range(number, min(chunks, number + SECTIONS_PER_FILE)):
            if section % 10 == 0:
                lines += [f"## Chapter {section // 10}", ""]
            title = " ".join(rng.choices(vocabulary, weights, k=3)).capitalize()
            words = rng.choices(vocabulary, weights, k=rng.randint(110, 200))
            cut = len(words) // 2
            lines += [f"### {title}", "", " ".join(words[:cut]) + ".", "",
                      " ".join(words[cut:]) + ".", ""]
        text = "\n".join(lines)
        (directory / f"generated-{number // SECTIONS_PER_FILE:03d}.md").write_text(text)
        size += len(text.encode())
    return size / 1e6


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
    asked = _load_questions(questions)
    unrelated = [str(q) for q in _load_questions(off_topic)]
    embedder = _TimedEmbedder()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        small = root / "manuals.sqlite3"
        index = KnowledgeIndex(small, embedder)
        for doc in sorted(p for p in manuals.iterdir() if p.suffix != ".py"):
            index.add(doc, max_file_mb=50)
        index.close()
        rates = {}
        for name, weights in (("hybrid", {}), ("dense", {"bm25_weight": 0.0}),
                              ("bm25", {"dense_weight": 0.0})):
            retriever = Retriever(small, embedder, **weights)
            rates[name] = _hit_rates(retriever, asked)
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


def report_refusals(r: Refusals) -> list[str]:
    """The refusal figures as lines for a person."""
    precision = "-" if r.precision is None else f"{r.precision:.3f}"
    return [
        f"refusals   below knowledge.min_score {r.min_score}: precision {precision}   recall "
        f"{r.recall:.3f}  ({r.off_topic_refused}/{r.off_topic} off-topic questions refused, "
        f"{r.on_topic_refused}/{r.on_topic} on-topic)",
        f"           best score: lowest on-topic {r.lowest_on_topic:.3f}, highest off-topic "
        f"{r.highest_off_topic:.3f}"]


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
    """The same questions and passages answered from a cold and a warm passage cache.

    Warm means restored from disk (as after a restart), not from memory. The
    second-passage figure is top_k 2 with the first passage cached: the price of
    a second passage is evaluating it.
    """
    asked = _load_questions(questions)[: 4 * rounds]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = KnowledgeIndex(root / "manuals.sqlite3", Embedder())
        for doc in sorted(p for p in manuals.iterdir() if p.suffix != ".py"):
            index.add(doc, max_file_mb=50)
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

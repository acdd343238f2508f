"""How well retrieval answers the question sets: hit rates, and what ``min_score`` refuses.

A hit is the right document and section within the top 3 (target >= 0.85). A
question is refused (``knowledge.mode: only``) when its best passage scores
under ``knowledge.min_score``: precision is the share of refused questions that
were off topic, recall the share of off-topic ones refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.knowledge.retriever import Retriever


def hit_rates(retriever: Retriever, questions: list[dict[str, str]],
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


def report_refusals(r: Refusals) -> list[str]:
    """The refusal figures as lines for a person."""
    precision = "-" if r.precision is None else f"{r.precision:.3f}"
    return [
        f"refusals   below knowledge.min_score {r.min_score}: precision {precision}   recall "
        f"{r.recall:.3f}  ({r.off_topic_refused}/{r.off_topic} off-topic questions refused, "
        f"{r.on_topic_refused}/{r.on_topic} on-topic)",
        f"           best score: lowest on-topic {r.lowest_on_topic:.3f}, highest off-topic "
        f"{r.highest_off_topic:.3f}"]

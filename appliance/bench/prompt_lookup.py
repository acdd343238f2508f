"""Prompt-lookup drafts for knowledge answers: tokens/s with them against without.

The prompts are the knowledge path's own: the system prompt, one passage of the
test manuals (``tests/manuals``) as reference text, and a question whose answer
quotes it. Each prompt is answered greedily with drafts and without, in
alternating order (A B, then B A) so that other load on the machine weighs on
both; the figure is the median of the per-prompt ratios of generation speed
(tokens after the first, per second, so prompt reading does not count). Under
greedy decoding the two texts should be the same: how many are is reported.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.knowledge.chunking import chunk, passage_hash
from appliance.knowledge.errors import KnowledgeError
from appliance.knowledge.formats import format_of, read
from appliance.knowledge.retriever import Passage
from appliance.llm import ChatRequest, Engine
from appliance.llm.types import Completion
from appliance.service.knowledge_context import passage_text

QUESTION = "Quote what the manual says about {topic}, word for word."
MIN_PASSAGE_TOKENS = 60


@dataclass(frozen=True)
class PromptLookupBench:
    """The figures of one run; speeds in tokens/s, medians over the prompts."""

    prompts: int
    runs: int
    with_tps: float
    without_tps: float
    ratio: float
    drafted: int
    accepted: int
    tokens: int
    identical: int
    differing: tuple[str, ...]

    @property
    def accepted_share(self) -> float:
        """Draft tokens the model agreed with, of all drafted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def drafted_share(self) -> float:
        """Answer tokens that came from an accepted draft."""
        return self.accepted / self.tokens if self.tokens else 0.0

    @property
    def bound_ratio(self) -> float:
        """The speed-up these drafts allow where a batch costs what one token costs.

        Generation bound by memory bandwidth (a Pi 5 with the 3B model) reads all
        the weights once per evaluation, however many tokens it checks; then
        every accepted draft token is free, and only ``tokens - accepted``
        evaluations remain. A CPU that is bound by compute (this benchmark's
        small model on a desktop core) pays for every checked token instead.
        """
        left = self.tokens - self.accepted
        return self.tokens / left if left > 0 else 0.0


def quoting_passages(manuals: Path, count: int) -> list[Passage]:
    """``count`` passages of the manuals, taken in turn from each document."""
    per_doc: list[list[Passage]] = []
    for path in sorted(manuals.iterdir()):
        try:
            fmt = format_of(path)
        except KnowledgeError:
            continue  # the PDF's generator script, not a manual
        document = read(fmt, path.read_bytes())
        per_doc.append([
            Passage(path.name, c.section, c.page, c.text, 0.0,
                    passage_hash(path.name, c.section, c.page, c.text), c.tokens)
            for c in chunk(document) if c.tokens >= MIN_PASSAGE_TOKENS and c.section])
    taken: list[Passage] = []
    while len(taken) < count and any(per_doc):
        for passages in per_doc:
            if passages and len(taken) < count:
                taken.append(passages.pop(0))
    return taken


def run_prompt_lookup_bench(model: ResolvedModel, manuals: Path, prompts: int = 8,
                            rounds: int = 1, max_tokens: int = 128) -> PromptLookupBench:
    """Each of ``prompts`` quoting prompts answered ``rounds`` times with and without drafts."""
    engine = Engine(LlmSettings(model_path=model.path, temperature=0.0), model)
    ratios, with_tps, without_tps = [], [], []
    drafted = accepted = tokens = identical = runs = 0
    differing: list[str] = []
    try:
        for turn in range(rounds):
            for i, passage in enumerate(quoting_passages(manuals, prompts)):
                topic = passage.section.rsplit(" > ", 1)[-1].lower()
                request = ChatRequest(QUESTION.format(topic=topic), max_tokens=max_tokens,
                                      context=(passage_text(passage),))
                order = (True, False) if (turn + i) % 2 else (False, True)
                done: dict[bool, Completion] = {}
                for lookup in order:
                    done[lookup] = engine.complete(replace(
                        request, prompt_lookup=lookup, id=f"{request.id}-{int(lookup)}"))
                drafted_run, plain = done[True], done[False]
                runs += 1
                with_tps.append(drafted_run.tokens_per_s)
                without_tps.append(plain.tokens_per_s)
                if plain.tokens_per_s:
                    ratios.append(drafted_run.tokens_per_s / plain.tokens_per_s)
                drafted += drafted_run.drafted
                accepted += drafted_run.accepted
                tokens += drafted_run.tokens
                if drafted_run.text == plain.text:
                    identical += 1
                else:
                    differing.append(f"{passage.doc} / {passage.section}")
    finally:
        engine.close()
    return PromptLookupBench(prompts=prompts, runs=runs,
                             with_tps=statistics.median(with_tps),
                             without_tps=statistics.median(without_tps),
                             ratio=statistics.median(ratios), drafted=drafted,
                             accepted=accepted, tokens=tokens, identical=identical,
                             differing=tuple(differing))


def report_prompt_lookup(r: PromptLookupBench) -> list[str]:
    """The figures as lines for a person."""
    lines = [f"prompt lookup  answers quoting their passage: {r.with_tps:6.1f} tok/s with "
             f"drafts, {r.without_tps:6.1f} without, median ratio {r.ratio:.2f}x "
             f"(target >= 1.3x; {r.runs} pairs over {r.prompts} prompts)",
             f"               drafts accepted {r.accepted}/{r.drafted} "
             f"({r.accepted_share:.0%}), {r.drafted_share:.0%} of the answers' tokens; "
             f"identical greedy texts {r.identical}/{r.runs}",
             f"               where an evaluation costs the same for one token or a batch "
             f"(bound by memory bandwidth: a Pi 5 with the 3B model), they allow up to "
             f"{r.bound_ratio:.2f}x"]
    lines += [f"               text differed: {where}" for where in r.differing]
    return lines

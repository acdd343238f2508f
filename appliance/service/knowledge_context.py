"""The context step: passages of the device's own manuals that match a question.

They go into the prompt as data (reference text, tokenized with special tokens
off, after the system prompt and before the question), the answer cites them
(``sources``), and in ``knowledge.mode: only`` a question they do not cover
gets a refusal that names the closest section instead of a guess.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from appliance.config.schema import KnowledgeSettings
from appliance.knowledge import KnowledgeError, Passage, Retriever
from appliance.llm.types import ChatRequest
from appliance.logs import get_logger

log = get_logger("knowledge")


def passage_text(passage: Passage) -> str:
    """A passage as the model reads it: where it comes from, then its text."""
    page = f", page {passage.page}" if passage.page is not None else ""
    return f"From {passage.doc}, {passage.section}{page}:\n{passage.text}"


def refusal(closest: Passage | None) -> str:
    """What ``mode: only`` answers when the manuals do not cover a question."""
    text = "The manuals on this device do not cover that."
    if closest is not None:
        page = f" (page {closest.page})" if closest.page is not None else ""
        text += f" The closest is the section \u201c{closest.section}\u201d of {closest.doc}{page}."
    return text


class KnowledgeContext:
    """Searches ``index`` for each question (on a thread: embedding it is a C call)."""

    def __init__(self, settings: KnowledgeSettings, index: Path) -> None:
        self.settings, self.index = settings, index
        self._retriever: Retriever | None = None
        self._opening = asyncio.Lock()
        self._missing_told = False

    def _open(self) -> Retriever | None:
        if self._retriever is None:
            try:
                self._retriever = Retriever(self.index)
            except KnowledgeError as exc:
                if not self._missing_told:
                    log.warning("no_knowledge", error=str(exc))
                    self._missing_told = True
                return None
        return self._retriever

    async def _opened(self) -> Retriever | None:
        """The retriever, opened on a thread the first time: that loads the embedding model."""
        if self._retriever is None:
            async with self._opening:
                if self._retriever is None:
                    await asyncio.to_thread(self._open)
        return self._retriever

    async def passages(self, question: str) -> list[Passage]:
        """The matching passages, best first, within ``top_k`` and ``max_context_tokens``."""
        retriever = await self._opened()
        if retriever is None:
            return []
        found = await asyncio.to_thread(retriever.search, question, self.settings.top_k,
                                        self.settings.min_score)
        kept, budget = [], self.settings.max_context_tokens
        for passage in found:
            if kept and passage.tokens > budget:
                break
            kept.append(passage)
            budget -= passage.tokens
        return kept

    def attach(self, chat: ChatRequest, passages: Sequence[Passage]) -> ChatRequest:
        """``chat`` answered from ``passages``: their text as its context.

        An answer that quotes its passage is generated faster with drafts
        looked up in it (``knowledge.prompt_lookup``), and comes out the same.
        """
        return replace(chat, context=tuple(passage_text(p) for p in passages),
                       prompt_lookup=self.settings.prompt_lookup)

    async def closest(self, question: str) -> Passage | None:
        """The best passage whatever its score (to name it in a refusal)."""
        retriever = await self._opened()
        if retriever is None:
            return None
        found = await asyncio.to_thread(retriever.search, question, 1)
        return found[0] if found else None

    def close(self) -> None:
        """Close the index."""
        if self._retriever is not None:
            self._retriever.close()

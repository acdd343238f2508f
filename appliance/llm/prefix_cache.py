"""Prompt-prefix KV states: a small LRU in memory, and (for passages) a budgeted one on disk."""

from __future__ import annotations

from collections import OrderedDict

import llama_cpp

from appliance.llm import kv_state, native
from appliance.llm.kv_disk import DiskKvCache
from appliance.llm.kv_state import KvSnapshot
from appliance.llm.prompt import PromptTokens, common_prefix


def cacheable_prefixes(prompt: PromptTokens, system: tuple[int, ...],
                       ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(longest cacheable prefix, the shorter one under it)`` of a rendered prompt.

    ``system`` is the prefix every prompt with the same system message and turns
    shares. With reference passages the longest is [system + first passage],
    which the next question about the same passage shares whatever else it brings.
    """
    if tuple(prompt.tokens[: len(system)]) != system:
        return (), ()
    if prompt.passage_ends:
        return tuple(prompt.tokens[: prompt.passage_ends[0]]), system
    return system, ()


class PrefixCache:
    """Keeps the KV state right after each prompt prefix, so it is evaluated once.

    ``capacity`` bounds memory: a snapshot holds the KV cells of its prefix
    only (about 0.1 MB per token for a 3B model), so two or three entries
    cover the normal and the thermally "brief" system prompt. ``disk`` keeps
    the states of longer prefixes (system prompt and a manual's passage) across
    questions and restarts.

    Every state is kept under the ``variant`` (LoRA adapter and scale) it was
    computed with and restored only under the same one; the caller keeps the
    live context true to the variant it passes (the engine empties it when
    the adapter changes).
    """

    def __init__(self, capacity: int, disk: DiskKvCache | None = None) -> None:
        self.capacity = capacity
        self.disk = disk
        self._states: OrderedDict[tuple[str, tuple[int, ...]], KvSnapshot] = OrderedDict()

    def restore(self, llm: llama_cpp.Llama, prefix: tuple[int, ...],
                base: tuple[int, ...] = (), variant: str = "", floor: int = 0,
                ) -> tuple[int, int]:
        """Make ``llm``'s context begin with ``prefix``: ``(tokens reused, tokens evaluated)``.

        ``base`` is a shorter prefix of it that is cached on its own (the
        system prompt, under a passage prefix): on a miss it is restored first,
        only the rest is evaluated, and the result also goes to disk.
        ``variant``: the adapter the context computes under now. ``floor`` > 0 (a
        prompt with earlier turns: where the first one ends): a context that already
        holds at least that much of ``prefix`` (the same conversation, one turn on)
        is kept, and only the rest is evaluated; and no state of such a prefix is
        kept (it would not recur: the conversation's next turn is longer).
        """
        if not prefix or not (self.capacity or self.disk is not None):
            llm.reset()
            return 0, 0
        n, key = len(prefix), (variant, prefix)
        if llm.n_tokens >= n and tuple(llm.input_ids[:n].tolist()) == prefix:
            if key in self._states:
                self._states.move_to_end(key)
            return n, 0
        snapshot = self._states.get(key)
        if snapshot is None and base and self.disk is not None:
            snapshot = self.disk.load(prefix, variant)
            if snapshot is not None:
                self.put(snapshot)
        if snapshot is not None:
            if key in self._states:  # not with no memory entries (a state from disk)
                self._states.move_to_end(key)
            kv_state.restore(llm, snapshot)
            return n, 0
        live = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), prefix)
        if floor and live >= floor and live > len(base) and native.drop_kv(llm, live, seq=0):
            # The context already holds most of it (a conversation's next turn: the last
            # answer is in the cache as it was generated): read only what differs.
            native.set_n_tokens(llm, live)
            reused, evaluated = live, 0
        elif base:
            reused, evaluated = self.restore(llm, base, variant=variant)
            native.set_n_tokens(llm, len(base))  # it may hold more: eval drops the rest
        else:
            llm.reset()
            reused, evaluated = 0, 0
        native.evaluate(llm, list(prefix[llm.n_tokens:]))
        if not floor:  # a conversation's prefix is not kept: its next turn reuses the context
            snapshot = kv_state.capture(llm, variant)
            self.put(snapshot)
            if base and self.disk is not None:
                self.disk.save(snapshot)
        return reused, evaluated + n - max(len(base), reused)

    def put(self, snapshot: KvSnapshot) -> None:
        """Keep ``snapshot`` in memory (evicting the least recently used beyond capacity)."""
        if not self.capacity:
            return
        key = (snapshot.variant, snapshot.tokens)
        self._states[key] = snapshot
        self._states.move_to_end(key)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

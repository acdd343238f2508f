"""Prompt-prefix KV states: a small LRU in memory, and (for passages) a budgeted one on disk."""

from __future__ import annotations

from collections import OrderedDict

import llama_cpp

from appliance.llm import kv_state, native
from appliance.llm.kv_disk import DiskKvCache
from appliance.llm.kv_state import KvSnapshot


class PrefixCache:
    """Keeps the KV state right after each prompt prefix, so it is evaluated once.

    ``capacity`` bounds memory: a snapshot holds the KV cells of its prefix
    only (about 0.1 MB per token for a 3B model), so two or three entries
    cover the normal and the thermally "brief" system prompt. ``disk`` keeps
    the states of longer prefixes (system prompt and a manual's passage) across
    questions and restarts.
    """

    def __init__(self, capacity: int, disk: DiskKvCache | None = None) -> None:
        self.capacity = capacity
        self.disk = disk
        self._states: OrderedDict[tuple[int, ...], KvSnapshot] = OrderedDict()

    def restore(self, llm: llama_cpp.Llama, prefix: tuple[int, ...],
                base: tuple[int, ...] = ()) -> tuple[int, int]:
        """Make ``llm``'s context begin with ``prefix``: ``(tokens reused, tokens evaluated)``.

        ``base`` is a shorter prefix of it that is cached on its own (the
        system prompt, under a passage prefix): on a miss it is restored first,
        only the rest is evaluated, and the result also goes to disk.
        """
        if not prefix or not (self.capacity or self.disk is not None):
            llm.reset()
            return 0, 0
        n = len(prefix)
        if llm.n_tokens >= n and tuple(llm.input_ids[:n].tolist()) == prefix:
            if prefix in self._states:
                self._states.move_to_end(prefix)
            return n, 0
        snapshot = self._states.get(prefix)
        if snapshot is None and base and self.disk is not None:
            snapshot = self.disk.load(prefix)
            if snapshot is not None:
                self.put(snapshot)
        if snapshot is not None:
            self._states.move_to_end(prefix)
            kv_state.restore(llm, snapshot)
            return n, 0
        if base:
            reused, evaluated = self.restore(llm, base)
            native.set_n_tokens(llm, len(base))  # it may hold more: eval drops the rest
        else:
            llm.reset()
            reused, evaluated = 0, 0
        llm.eval(list(prefix[llm.n_tokens:]))
        snapshot = kv_state.capture(llm)
        self.put(snapshot)
        if base and self.disk is not None:
            self.disk.save(snapshot)
        return reused, evaluated + n - len(base)

    def put(self, snapshot: KvSnapshot) -> None:
        """Keep ``snapshot`` in memory (evicting the least recently used beyond capacity)."""
        if not self.capacity:
            return
        self._states[snapshot.tokens] = snapshot
        self._states.move_to_end(snapshot.tokens)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

"""A small LRU of KV snapshots, one per prompt prefix (system prompt, and reference text)."""

from __future__ import annotations

from collections import OrderedDict

import llama_cpp

from appliance.llm import kv_state
from appliance.llm.kv_state import KvSnapshot


class PrefixCache:
    """Keeps the KV state right after each prompt prefix, so it is evaluated once per process.

    ``capacity`` bounds memory: a snapshot holds the KV cells of its prefix
    only (about 0.1 MB per token for a 3B model), so two or three entries
    cover the normal and the thermally "brief" system prompt.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: OrderedDict[tuple[int, ...], KvSnapshot] = OrderedDict()

    def restore(self, llm: llama_cpp.Llama, prefix: tuple[int, ...]) -> int:
        """Make ``llm``'s context begin with ``prefix``; return how many tokens were reused.

        Returns 0 when the cache is off (the context is then reset) or the
        prefix had to be evaluated now (it is then stored for next time).
        """
        if not self.capacity or not prefix:
            llm.reset()
            return 0
        n = len(prefix)
        if llm.n_tokens >= n and tuple(llm.input_ids[:n].tolist()) == prefix:
            if prefix in self._states:
                self._states.move_to_end(prefix)
            return n
        snapshot = self._states.get(prefix)
        if snapshot is not None:
            self._states.move_to_end(prefix)
            kv_state.restore(llm, snapshot)
            return n
        llm.reset()
        llm.eval(list(prefix))
        self.put(kv_state.capture(llm))
        return 0

    def put(self, snapshot: KvSnapshot) -> None:
        """Keep ``snapshot`` (evicting the least recently used beyond capacity)."""
        if not self.capacity:
            return
        self._states[snapshot.tokens] = snapshot
        self._states.move_to_end(snapshot.tokens)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

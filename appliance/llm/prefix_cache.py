"""A small LRU of llama.cpp states, one per system-prompt prefix."""

from __future__ import annotations

from collections import OrderedDict

import llama_cpp


class PrefixCache:
    """Keeps the KV state right after each system prompt, so it is evaluated once per process.

    ``capacity`` bounds memory: a state holds the KV cells of its prefix only
    (about 0.1 MB per token for a 3B model), so two or three entries cover the
    normal and the thermally "brief" system prompt.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: OrderedDict[tuple[int, ...], llama_cpp.LlamaState] = OrderedDict()

    def restore(self, llm: llama_cpp.Llama, prefix: tuple[int, ...]) -> int:
        """Make ``llm``'s context begin with ``prefix``; return how many tokens were reused.

        Returns 0 when the cache is off or the prefix had to be evaluated now
        (it is then stored for next time).
        """
        if not self.capacity or not prefix:
            llm.reset()
            return 0
        n = len(prefix)
        if llm.n_tokens >= n and tuple(llm.input_ids[:n].tolist()) == prefix:
            if prefix in self._states:
                self._states.move_to_end(prefix)
            return n
        state = self._states.get(prefix)
        if state is not None:
            self._states.move_to_end(prefix)
            llm.load_state(state)
            return n
        llm.reset()
        llm.eval(list(prefix))
        self._states[prefix] = llm.save_state()
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return 0

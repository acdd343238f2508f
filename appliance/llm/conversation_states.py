"""The model's state after each conversation's last turn, so a follow-up reads only itself.

After an answer in a conversation, the context is left holding exactly what the
conversation's next prompt starts with: its turns up to the end of that answer
(:meth:`ConversationStates.settle`). A follow-up to the most recent
conversation then finds it in the context and reads only its own new tokens.

When another request takes the context, the state it held is written to disk
first (:meth:`evict`: a copy in memory now, the file by a background thread,
so the other request waits only for the copy). A later follow-up to that
conversation restores it from there (:meth:`resume`), if its turns still start
the same way: a state is found by the exact tokens it holds, so a prompt whose
earlier part changed (other readings, a dropped turn) never gets a wrong one.
Files live in a budgeted directory (least recently used go first); toy mode
keeps none on disk.
"""

from __future__ import annotations

import queue
import threading

import llama_cpp

from appliance.llm import kv_state, native
from appliance.llm.kv_disk import DiskKvCache
from appliance.llm.kv_state import KvSnapshot
from appliance.llm.prompt import ChatPrompt, PromptTokens, common_prefix
from appliance.llm.types import ChatRequest, Turn
from appliance.logs import get_logger

log = get_logger("engine")


def next_turn(prompt: ChatPrompt, system: str, request: ChatRequest,
              answer: str) -> tuple[int, ...]:
    """The tokens the conversation's next prompt starts with: its turns up to ``answer``'s end."""
    turns = (*request.history, Turn("user", request.text), Turn("assistant", answer))
    after = prompt.render(system, "", turns)
    return tuple(after.tokens[: after.last_turn_end])


class ConversationStates:
    """Settles, evicts and resumes conversation states; ``disk`` ``None``: memory only."""

    def __init__(self, disk: DiskKvCache | None) -> None:
        self.disk = disk
        self._held: tuple[str, tuple[int, ...]] | None = None  # (variant, tokens) settled
        self._writes: queue.Queue[KvSnapshot] = queue.Queue(maxsize=1)  # memory: one waits
        if disk is not None:
            threading.Thread(target=self._write, name="conversation-states",
                             daemon=True).start()

    def settle(self, llm: llama_cpp.Llama, key: tuple[int, ...], variant: str) -> None:
        """Make the context hold exactly ``key`` (the conversation's next prompt's start)."""
        held = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), key)
        if held < len(key) // 2 or not native.drop_kv(llm, held, seq=0):
            self._held = None  # the answer was cut or rewritten: nothing worth keeping
            return
        native.set_n_tokens(llm, held)
        if held < len(key):
            native.evaluate(llm, list(key[held:]))  # the answer's end as the template writes it
        self._held = (variant, key)

    def before(self, llm: llama_cpp.Llama, prompt: PromptTokens, variant: str) -> None:
        """Before ``prompt`` is read: keep another conversation's state; find this one's."""
        tokens = prompt.tokens
        self.evict(llm, tokens)
        if prompt.last_turn_end and common_prefix(
                llm.input_ids[: llm.n_tokens].tolist(), tokens) < prompt.first_turn_end:
            self.resume(llm, tuple(tokens[: prompt.last_turn_end]), variant)

    def evict(self, llm: llama_cpp.Llama, prompt: list[int]) -> None:
        """Another prompt takes the context: keep the settled state first, if ``prompt`` differs."""
        if self._held is None:
            return
        variant, key = self._held
        if tuple(prompt[: len(key)]) == key:
            return  # its own follow-up: the context is reused as it is
        self._held = None
        if self.disk is None or llm.n_tokens != len(key) or \
                tuple(llm.input_ids[: len(key)].tolist()) != key:
            return
        try:
            self._writes.put_nowait(kv_state.capture(llm, variant))
        except queue.Full:  # the disk is behind: this state is not worth waiting for
            log.info("conversation_state_skipped", tokens=len(key))

    def resume(self, llm: llama_cpp.Llama, key: tuple[int, ...], variant: str) -> bool:
        """Restore the state kept for ``key``; ``False`` if there is none."""
        snapshot = self.disk.load(key, variant) if self.disk is not None and key else None
        if snapshot is None:
            return False
        kv_state.restore(llm, snapshot)
        return True

    def _write(self) -> None:
        assert self.disk is not None
        while True:
            self.disk.save(self._writes.get())

"""Snapshots of the KV cache of sequence 0: the cheap way to reuse a prompt's evaluation.

``Llama.save_state()`` also copies its logits buffer (``n_batch * n_vocab``
floats: about 250 MiB for Llama 3.2), which nothing here needs, since the
next ``generate()`` re-evaluates one token anyway. A :class:`KvSnapshot` holds
only the sequence's KV cells (about 0.1 MiB per token for a 3B model) and the
tokens they stand for, and the ``variant`` (LoRA adapter and scale) they were
computed under: a state is only valid under the same one.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp

from appliance.errors import ModelError
from appliance.llm import native

FLASH_ATTENTION = True
"""Whether the engine's contexts use flash attention; a saved state depends on it.

With it, evaluating tokens in one batch gives bit for bit the logits of
evaluating them one by one (without it, llama.cpp's CPU attention sums in a
different order for a batch, and greedy answers drift), which is what lets
drafted tokens be verified without changing the answer. It also changes the
KV layout (V is no longer kept transposed), so states saved with and without
it do not mix.
"""


@dataclass(frozen=True)
class KvSnapshot:
    """The KV state after evaluating ``tokens`` from an empty context, under ``variant``."""

    tokens: tuple[int, ...]
    data: bytes
    variant: str = ""

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self.data)


def capture(llm: llama_cpp.Llama, variant: str = "") -> KvSnapshot:
    """The current KV state of ``llm`` (its first ``n_tokens`` tokens), made under ``variant``."""
    ctx = native.context(llm)
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
    if not written:
        raise ModelError("llama.cpp could not copy the KV state")
    return KvSnapshot(tuple(int(t) for t in llm.input_ids[: llm.n_tokens]),
                      bytes(memoryview(buffer)[:written]), variant)


def restore(llm: llama_cpp.Llama, snapshot: KvSnapshot) -> None:
    """Make ``llm``'s context hold exactly ``snapshot``; the next generate replays one token."""
    native.drop_kv(llm, 0, seq=0)
    buffer = (ctypes.c_uint8 * snapshot.size).from_buffer_copy(snapshot.data)
    if llama_cpp.llama_state_seq_set_data(native.context(llm), buffer, snapshot.size, 0) == 0:
        llm.reset()
        raise ModelError("llama.cpp refused a saved KV state (another model or context size?)")
    n = len(snapshot.tokens)
    llm.input_ids[:n] = snapshot.tokens
    native.set_n_tokens(llm, n)
    native.set_requires_eval(llm, True)

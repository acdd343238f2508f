"""The one module that reaches into llama-cpp-python's private parts.

Its public :class:`llama_cpp.Llama` API evaluates and samples, but our token
loop (:mod:`~appliance.llm.decode_loop`), the KV snapshots
(:mod:`~appliance.llm.kv_state`) and the prompt need a few things it keeps
to itself: the native context and vocabulary handles, its batch, the builder
of its sampler chain, and its bookkeeping of what the KV cache holds. Each is
one small function here, so that upgrading llama-cpp-python (pinned in
``pyproject.toml``) means checking this file against the new ``llama.py`` and
``_internals.py``; ``tests/test_llm_boundaries.py`` fails if another module
touches them.

The bookkeeping, which every writer here keeps true:
``llm.input_ids[:llm.n_tokens]`` are exactly the tokens whose KV cells the
context holds, and :func:`requires_eval` says that the context's last logits
do not belong to the last of them (so the next generation replays it).

Importing this module loads nothing of llama-cpp-python: the functions work
on the ``Llama`` they are given, and :func:`ggml_type_sizes` (which the start-up
checks of ``appliance run`` and ``config check`` need) opens only ggml's shared
library, so that the supervisor never holds llama_cpp and numpy.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from appliance.errors import ModelError

if TYPE_CHECKING:
    import llama_cpp
    from llama_cpp import _internals
    from llama_cpp.llama_grammar import LlamaGrammar

GGML_TYPE_COUNT = 43
"""``llama_cpp.GGML_TYPE_COUNT`` of the pinned llama-cpp-python (a test keeps them equal)."""


class SamplerChain:
    """A llama.cpp sampler chain, freed with this object; ``handle`` is what the C API takes."""

    def __init__(self, owner: _internals.LlamaSampler) -> None:
        self._owner = owner  # frees the native chain when it is collected
        self.handle: llama_cpp.llama_sampler_p = owner.sampler


def context(llm: llama_cpp.Llama) -> llama_cpp.llama_context_p:
    """The native ``llama_context`` (for ``llama_get_logits_ith``, ``llama_state_seq_*``...)."""
    return llm._ctx.ctx


def vocab(llm: llama_cpp.Llama) -> llama_cpp.llama_vocab_p:
    """The native ``llama_vocab`` of the loaded model."""
    return llm._model.vocab


def token_text(llm: llama_cpp.Llama, token: int) -> str:
    """A token's text as the vocabulary stores it (``<|im_end|>``), special tokens included."""
    return llm._model.token_get_text(token)


def context_size(llm: llama_cpp.Llama) -> int:
    """The context's size in tokens, as ``Llama`` itself bounds its prompts with it."""
    return llm._n_ctx


def set_threads(llm: llama_cpp.Llama, n_threads: int, n_threads_batch: int) -> None:
    """Use these decode and batch thread counts from the next evaluation on."""
    llm._ctx.set_n_threads(n_threads, n_threads_batch)


def drop_kv(llm: llama_cpp.Llama, start: int, *, seq: int = -1) -> bool:
    """Remove the KV cells from position ``start`` on (of sequence ``seq``; -1: all).

    ``False`` when llama.cpp cannot remove part of a sequence (recurrent
    models). The bookkeeping is the caller's: see :func:`set_n_tokens`.
    """
    return bool(llm._ctx.kv_cache_seq_rm(seq, start, -1))


def set_n_tokens(llm: llama_cpp.Llama, n: int) -> None:
    """Say that the context holds the first ``n`` of ``llm.input_ids``."""
    llm.n_tokens = n


def requires_eval(llm: llama_cpp.Llama) -> bool:
    """Whether the last logits do not belong to the last token held (see the module's note)."""
    return bool(llm._requires_eval)


def set_requires_eval(llm: llama_cpp.Llama, value: bool) -> None:
    """Say whether the last logits belong to the last token held (``False``: they do)."""
    llm._requires_eval = value


def decode_with_all_logits(llm: llama_cpp.Llama, tokens: Sequence[int], n_past: int) -> None:
    """Evaluate ``tokens`` at positions ``n_past``... in one batch, keeping every row's logits.

    ``Llama.eval`` keeps the last row's only. ``tokens`` must fit ``llm.n_batch``;
    the caller drops the cells past ``n_past`` first and does the bookkeeping.
    """
    llm._batch.set_batch(list(tokens), n_past=n_past, logits_all=True)
    llm._ctx.decode(llm._batch)


def widen_context(llm: llama_cpp.Llama, n_ctx: int, n_seq_max: int) -> None:
    """Give ``llm`` a new context of ``n_ctx`` KV cells shared by ``n_seq_max`` sequences.

    ``Llama`` makes a context for one sequence; several decoded together need
    ``n_seq_max`` sequence ids over one unified cache (so that copying a
    sequence only tags its cells). Call it right after loading: the old context
    and what it holds are freed. :func:`context_size` stays what ``llm`` was
    loaded with: the most one sequence may hold.
    """
    from llama_cpp import _internals

    params = llm.context_params
    params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx, n_seq_max, True
    widened = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    llm._ctx.close()
    llm._ctx = widened
    llm.reset()


def drop_seq(llm: llama_cpp.Llama, seq: int, start: int = 0) -> bool:
    """Remove sequence ``seq``'s cells from position ``start`` on (shared cells stay for others)."""
    import llama_cpp

    return bool(llama_cpp.llama_memory_seq_rm(llm._ctx.memory, seq, start, -1))


def copy_seq(llm: llama_cpp.Llama, source: int, target: int) -> None:
    """Make sequence ``target`` hold what ``source`` holds (the cells are shared, not copied)."""
    import llama_cpp

    llama_cpp.llama_memory_seq_cp(llm._ctx.memory, source, target, -1, -1)


class Batch:
    """Tokens of several sequences, decoded together by :meth:`decode`.

    Each token is added with its sequence, its position in it, and whether its
    logits are kept; :meth:`add` returns its index, which is what
    ``llama_get_logits_ith`` takes to read them.
    """

    def __init__(self, llm: llama_cpp.Llama, size: int) -> None:
        from llama_cpp import _internals

        self.size = size
        self._owner = _internals.LlamaBatch(n_tokens=size, embd=0, n_seq_max=1, verbose=False)
        self._native = self._owner.batch
        self._llm = llm
        self._native.n_tokens = 0

    def __len__(self) -> int:
        return int(self._native.n_tokens)

    @property
    def room(self) -> int:
        """Tokens that still fit."""
        return self.size - len(self)

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Add one token; its index in the batch."""
        b, i = self._native, int(self._native.n_tokens)
        b.token[i], b.pos[i], b.seq_id[i][0], b.n_seq_id[i], b.logits[i] = (
            token, pos, seq, 1, logits)
        b.n_tokens = i + 1
        return i

    def decode(self) -> int:
        """Decode what was added and empty the batch: 0, or llama.cpp's code (1: no KV room)."""
        import llama_cpp

        try:
            return int(llama_cpp.llama_decode(self._llm._ctx.ctx, self._native))
        finally:
            self._native.n_tokens = 0


class Rider(Protocol):
    """A running sequence that rides along in every decode of the context (see :func:`evaluate`)."""

    def board(self, batch: Batch) -> None:
        """Add this sequence's next tokens to ``batch``."""

    def alight(self) -> None:
        """The batch was decoded: take this sequence's logits."""


@dataclass
class _Carried:
    riders: Callable[[], Sequence[Rider]]
    batch: Batch
    chunk: int


_carried: weakref.WeakKeyDictionary[llama_cpp.Llama, _Carried] = weakref.WeakKeyDictionary()


def carry_riders(llm: llama_cpp.Llama, riders: Callable[[], Sequence[Rider]],
                 batch: Batch, chunk: int) -> None:
    """From now on every :func:`evaluate` of ``llm`` decodes ``riders()``'s tokens too.

    A prompt is then read ``chunk`` tokens at a time, so that each decode of it
    stays short for the answers riding along.
    """
    _carried[llm] = _Carried(riders, batch, chunk)


def evaluate(llm: llama_cpp.Llama, tokens: Sequence[int]) -> None:
    """``llm.eval(tokens)`` on sequence 0, with the running sequences riding along.

    Without riders this is ``Llama.eval`` itself. With them (see
    :func:`carry_riders`), ``tokens`` are read a chunk at a time, each chunk
    in one batch with every rider's next tokens: a long prompt advances the
    running answers instead of stalling them. Sequence 0's tokens go last, so
    that row -1 holds the logits of its last token, as after ``Llama.eval``.
    """
    carried = _carried.get(llm)
    running = carried.riders() if carried is not None else ()
    if carried is None or not running:
        llm.eval(tokens)
        return
    batch = carried.batch
    drop_kv(llm, llm.n_tokens, seq=0)
    rest = list(tokens)
    while rest:
        for rider in running:
            rider.board(batch)
        size = max(1, min(carried.chunk, batch.room))
        part, rest = rest[:size], rest[size:]
        n = llm.n_tokens
        for i, token in enumerate(part):
            batch.add(token, n + i, 0, i == len(part) - 1 and not rest)
        decode_or_raise(batch)
        llm.input_ids[n: n + len(part)] = part
        set_n_tokens(llm, n + len(part))
        set_requires_eval(llm, bool(rest))
        for rider in running:
            rider.alight()
        running = carried.riders()


def decode_or_raise(batch: Batch) -> None:
    """Decode ``batch``; a :class:`ModelError` naming llama.cpp's code if it fails."""
    code = batch.decode()
    if code == 1:
        raise ModelError("the KV cache is full: lower llm.parallel or raise llm.n_ctx")
    if code != 0:
        raise ModelError(f"llama.cpp could not decode a batch (code {code})")


def sampler_chain(llm: llama_cpp.Llama, *, top_k: int, top_p: float, min_p: float,
                  temp: float, repeat_penalty: float, frequency_penalty: float,
                  presence_penalty: float) -> SamplerChain:
    """The very chain ``Llama.generate`` builds for these arguments, without a grammar.

    Penalties, then greedy (``temp`` 0) or top-k, typical, top-p, min-p,
    temperature and a draw with ``llm``'s seed.
    """
    return SamplerChain(llm._init_sampler(
        top_k=top_k, top_p=top_p, min_p=min_p, temp=temp, repeat_penalty=repeat_penalty,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty))


def grammar_sampler(llm: llama_cpp.Llama, grammar: LlamaGrammar) -> SamplerChain | None:
    """A chain of one sampler that applies ``grammar``; ``None`` if llama.cpp cannot compile it."""
    import llama_cpp
    from llama_cpp import _internals

    native = llama_cpp.llama_sampler_init_grammar(
        vocab(llm), grammar._grammar.encode(), grammar._root.encode())
    if not native:
        return None
    chain = _internals.LlamaSampler()  # owns, and frees, the samplers added to it
    llama_cpp.llama_sampler_chain_add(chain.sampler, native)
    return SamplerChain(chain)


def load_lora(llm: llama_cpp.Llama, path: Path) -> llama_cpp.llama_adapter_lora_p:
    """Load the LoRA adapter at ``path`` for ``llm``'s model; it lives as long as the model.

    llama.cpp frees it with the model, so nothing here frees it (twice would crash).
    """
    import llama_cpp

    handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode())
    if not handle:
        raise ModelError(f"{path}: llama.cpp could not load this LoRA adapter for the model")
    return handle


def set_loras(llm: llama_cpp.Llama,
              active: Sequence[tuple[llama_cpp.llama_adapter_lora_p, float]]) -> None:
    """Make ``active`` (adapter, scale) pairs the context's adapters; ``()``: none.

    The next decode rebuilds the graph; no weights are read again. The KV cache
    is left as it is: what it holds was computed under the adapters before.
    """
    import llama_cpp

    n = len(active)
    handles = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*(h for h, _ in active)) if n else None
    scales = (ctypes.c_float * n)(*(s for _, s in active)) if n else None
    if llama_cpp.llama_set_adapters_lora(context(llm), handles, n, scales) != 0:
        raise ModelError("llama.cpp could not switch the LoRA adapters")


@cache
def ggml_type_sizes() -> tuple[tuple[int, int], ...]:
    """(block size, bytes per block) of every ggml type, from the ggml that llama.cpp runs.

    Asked of the library itself: tables copied elsewhere drift (the ``gguf`` package's
    Q8_1 size no longer matches this ggml's). A removed type has block size 0.
    """
    lib = _libggml()
    lib.ggml_blck_size.restype, lib.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    lib.ggml_type_size.restype, lib.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    return tuple((lib.ggml_blck_size(t), lib.ggml_type_size(t)) for t in range(GGML_TYPE_COUNT))


def _libggml() -> ctypes.CDLL:
    """The ggml shared library in llama-cpp-python's wheel, where ``llama_cpp._ggml`` finds it."""
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("llama-cpp-python is not installed")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    names = ("libggml.so", "libggml.dylib") if sys.platform == "darwin" else ("libggml.so",)
    for name in names:
        if (lib / name).exists():
            return ctypes.CDLL(str(lib / name))
    raise ModelError(f"llama-cpp-python's ggml library is missing from {lib}")

"""Sampling one token from a decode's logits, as ``Llama.generate``'s chain would, but cheaper.

:class:`Sampler` holds llama.cpp's sampler chain for one answer (penalties, then
greedy or top-k/top-p/min-p and temperature) and, with an output grammar, the
grammar's own sampler. Under greedy decoding it first looks only at the
candidates near the top of the logits (:data:`NEAR_TOP`): penalties only lower a
logit and the grammar only rejects, so a choice above the margin's bound is the
one the whole vocabulary would give, and llama.cpp's copy of every candidate
(262k for Gemma 3, 128k for Llama 3) is paid only when it is not certain. With a
grammar, the chosen token is checked alone and the grammar runs over the whole
vocabulary only when it rejects it (see :mod:`appliance.llm.decode_loop`).
"""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar

from appliance.errors import ModelError
from appliance.llm import native

NEAR_TOP = (4.0, 12.0)
"""Greedy with a grammar looks first at the candidates within this many logits of the
best, then (if the grammar rejects all of those) within the next margin: penalties only
lower logits, so the answer is among them whenever it beats the margin's bound, and the
whole vocabulary is read only when it does not (rarely: over 30 decisions, the grammar's
choice was never more than 12 below the best)."""
NEAR_TOP_MAX = 4096
"""More candidates than this within a margin (a flat distribution): read them all."""

_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
"""``llama_token_data`` as a numpy record, so the candidates array is filled without a loop."""



class Sampler:
    """``Llama.generate``'s sampler chain, with the grammar checked after it instead of in it."""

    def __init__(self, llm: llama_cpp.Llama, grammar: LlamaGrammar | None, *, temp: float,
                 top_p: float, top_k: int, min_p: float, repeat_penalty: float,
                 frequency_penalty: float, presence_penalty: float) -> None:
        self._ctx = native.context(llm)
        self._n_vocab = llm.n_vocab()
        self._chain = native.sampler_chain(
            llm, top_k=top_k, top_p=top_p, min_p=min_p, temp=temp, repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
        # That chain is the penalties and greedy exactly when temp is 0.
        self._near_top = (temp == 0.0 and repeat_penalty >= 1.0 and frequency_penalty >= 0.0
                          and presence_penalty >= 0.0)
        self._grammar: native.SamplerChain | None = None
        self.free = False
        self._near = np.zeros(NEAR_TOP_MAX, dtype=_TOKEN_DATA)
        self._near_all = _candidates(self._near)
        if grammar is None:
            return
        self._grammar = native.grammar_sampler(llm, grammar)
        if self._grammar is None:
            raise ModelError("llama.cpp could not compile the output grammar")
        self._ids = np.arange(self._n_vocab, dtype=np.intc)
        self._data = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
        self._all = _candidates(self._data)
        self._one = llama_cpp.llama_token_data()
        self._single = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False)

    def sample(self, idx: int) -> int:
        """Sample from the logits of output ``idx`` of the last decode, and accept the token.

        Greedy decoding looks only near the top, with or without a grammar: the
        chain over a whole vocabulary (262k entries for Gemma) costs more than
        the rest of a step's own work.
        """
        constrained = self._grammar is not None and not self.free
        if not (constrained or self._near_top):
            return llama_cpp.llama_sampler_sample(self._chain.handle, self._ctx, idx)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, idx),
                                       shape=(self._n_vocab,))
        if not constrained:
            token = self._pick_near_top(logits, constrained=False)
            if token is None:  # not certain there: the whole vocabulary, as Llama.generate
                return llama_cpp.llama_sampler_sample(self._chain.handle, self._ctx, idx)
            llama_cpp.llama_sampler_accept(self._chain.handle, token)
            return token
        token = self._pick_near_top(logits) if self._near_top else None
        if token is None:
            token = self._pick(logits, with_grammar=False)
            if not self._allows(token):
                # Only now pay for the grammar over the whole vocabulary. Applying it before
                # the penalties, where Llama.generate applies it after them, changes nothing:
                # both leave a rejected token at -inf and an allowed one penalized the same.
                token = self._pick(logits, with_grammar=True)
        llama_cpp.llama_sampler_accept(self._grammar.handle, token)
        llama_cpp.llama_sampler_accept(self._chain.handle, token)
        return token

    def _pick(self, logits: np.ndarray, *, with_grammar: bool) -> int:
        """Run the chain (after the grammar if asked) over all candidates; the chosen token."""
        token, logit = self._chain_choice(self._data, self._all, self._ids, logits,
                                          with_grammar=with_grammar)
        if token < 0 or math.isinf(logit):
            raise ModelError("the output grammar allows no token here")
        return token

    def _pick_near_top(self, logits: np.ndarray, *, constrained: bool = True) -> int | None:
        """Greedy's choice among the candidates near the top, if it is certain.

        Every candidate left out has a logit below the margin's bound, which
        penalties only lower and the grammar only rejects; a choice above that
        bound is therefore the one the whole vocabulary would give (the lowest
        id among equals, as the candidates stay in id order). ``None``: not certain.
        """
        top = float(logits.max())
        checked = False
        for margin in NEAR_TOP:
            bound = top - margin
            near = np.flatnonzero(logits > bound)
            if not 0 < len(near) <= NEAR_TOP_MAX:  # none: logits that are not finite
                return None
            if not constrained:
                return self._choose(near, logits, bound, with_grammar=False)
            if not checked:
                token = self._choose(near, logits, bound, with_grammar=False)
                if token is None or self._allows(token):
                    return token
                checked = True
            token = self._choose(near, logits, bound, with_grammar=True)
            if token is not None:
                return token
        return None

    def _choose(self, near: np.ndarray, logits: np.ndarray, bound: float, *,
                with_grammar: bool) -> int | None:
        """The chain's choice among ``near`` (after the grammar if asked), if above ``bound``."""
        token, logit = self._chain_choice(self._near, self._near_all, near, logits[near],
                                          with_grammar=with_grammar)
        return token if logit > bound else None  # else all rejected, or penalized below

    def _chain_choice(self, data: np.ndarray, cur: llama_cpp.llama_token_data_array,
                      ids: np.ndarray, values: np.ndarray, *,
                      with_grammar: bool) -> tuple[int, float]:
        """The chain's token among ``ids`` with logits ``values``, and its logit after it.

        ``cur`` spans the records of ``data``; the chain sorts and truncates them
        in place, so they are refilled every time. ``(-1, -inf)``: none chosen.
        """
        records = data[: len(ids)]
        records["id"], records["logit"], records["p"] = ids, values, 0.0
        cur.size, cur.selected, cur.sorted = len(ids), -1, False
        if with_grammar:
            assert self._grammar is not None
            llama_cpp.llama_sampler_apply(self._grammar.handle, ctypes.byref(cur))
        llama_cpp.llama_sampler_apply(self._chain.handle, ctypes.byref(cur))
        if cur.selected < 0:
            return -1, -math.inf
        return int(records["id"][cur.selected]), float(records["logit"][cur.selected])

    def _allows(self, token: int) -> bool:
        """Whether the grammar accepts ``token`` next: the grammar run over a single candidate."""
        assert self._grammar is not None
        self._one.id, self._one.logit, self._one.p = token, 1.0, 0.0
        self._single.size, self._single.selected, self._single.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar.handle, ctypes.byref(self._single))
        return self._one.logit != -math.inf


def _candidates(data: np.ndarray) -> llama_cpp.llama_token_data_array:
    """A ``llama_token_data_array`` over the records of ``data`` (which must outlive it)."""
    return llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(data), selected=-1,
        sorted=False)

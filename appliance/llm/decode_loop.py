"""Our token loop: a drop-in for ``Llama.generate`` that is fast with a grammar and with drafts.

:func:`generate` yields the same tokens as ``llm.generate(tokens, reset=True,
...)`` and leaves the context in the same state, with two differences in cost:

* **Grammar.** ``Llama.generate`` puts the grammar into its sampler chain, so
  before every token llama.cpp runs the grammar over the whole vocabulary
  (49k tokens for SmolLM2, 128k for Llama 3), which can cost more than the
  token's evaluation. Like llama.cpp's own ``common_sampler_sample``, we sample
  with the chain alone, check only the chosen token against the grammar, and
  run the grammar over the whole vocabulary only when it rejects that token.
  Under greedy decoding this gives exactly the grammar-constrained argmax, and
  both steps first look only at the candidates near the top of the logits
  (:data:`~appliance.llm.sampler.NEAR_TOP`), where the answer is whenever it can be
  proven to be: copying and scanning 49k candidates cost more than the grammar did.
  When sampling, the accepted-first-try tokens are drawn from the
  unconstrained top-k/top-p set rather than the constrained one, as in
  llama.cpp's server; every token still satisfies the grammar.
* **Greedy.** Without a grammar too, greedy decoding looks near the top first,
  and at the whole vocabulary only when the choice there is not certain:
  llama.cpp's chain copies every candidate (262k for Gemma 3, 128k for
  Llama 3) for every token of every sequence, about 2 ms a token here.
* **Drafts.** With ``draft`` (a :class:`~appliance.llm.lookup.PromptLookup`),
  guessed continuations are checked in one batch: [last token + draft] is
  evaluated with logits for every position, each position is sampled in
  order with the same chain, and the guess is accepted up to the first token
  that differs from it. A token whose guess was right costs a share of one
  batched evaluation instead of one evaluation of its own, which is what
  makes generation faster than memory bandwidth alone allows. Unlike
  ``Llama(draft_model=...)``, this needs no ``logits_all`` buffer (n_ctx x
  n_vocab floats: 1 GB for Llama 3.2 at 2048 tokens).

The state contract that the engine's prefix cache relies on holds at every
yield: ``llm.input_ids[:llm.n_tokens]`` are exactly the tokens whose KV cells
the context holds (the prompt and the answer's tokens before the one just
yielded, plus, when drafting, draft tokens already verified), and
:func:`~appliance.llm.native.requires_eval` is true whenever the context's
last logits do not belong to the last of them. What this needs of
llama-cpp-python beyond its public API goes through :mod:`appliance.llm.native`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar

from appliance.llm import native
from appliance.llm.cells import Cells, HomeCells
from appliance.llm.lookup import PromptLookup
from appliance.llm.prompt import common_prefix
from appliance.llm.sampler import Sampler


def generate(llm: llama_cpp.Llama, tokens: Sequence[int], *, temp: float, top_p: float,
             top_k: int, min_p: float = 0.05, repeat_penalty: float,
             frequency_penalty: float, presence_penalty: float,
             grammar: LlamaGrammar | None, draft: PromptLookup | None = None) -> Generation:
    """Sample the answer to the prompt ``tokens`` token by token.

    The arguments mean what they mean to ``Llama.generate`` (whose defaults
    ``min_p=0.05`` and ``typical_p=1`` apply here too). The consumer may stop
    at any token. Without ``draft``, ``llama_get_logits_ith(ctx, -1)`` holds
    the logits that sampled the token just yielded; with it, use
    :meth:`Generation.logits`, which is right in both cases.
    """
    if not tokens:
        raise ValueError("generate needs at least one prompt token")
    sampler = Sampler(llm, grammar, temp=temp, top_p=top_p, top_k=top_k, min_p=min_p,
                       repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty)
    return Generation(llm, list(tokens), sampler, draft)


class Generation(Iterator[int]):
    """The tokens of one answer as they are sampled (made by :func:`generate`).

    ``drafted`` and ``accepted`` count the draft tokens proposed and the
    ones the model agreed with. A thinking model's thought is sampled with the
    grammar held off (:meth:`hold_grammar`) and may be closed by :meth:`force`.

    Iterating it decodes on its own, in sequence 0. An answer decoded beside
    others is iterated for its first token only, then moved to a lane of its
    own (:meth:`move`) and stepped by the caller: :meth:`board` adds its next
    tokens to a shared batch, :meth:`alight` samples once that batch is decoded,
    and iterating hands out what was sampled.
    """

    def __init__(self, llm: llama_cpp.Llama, tokens: list[int], sampler: Sampler,
                 draft: PromptLookup | None) -> None:
        self._llm = llm
        self._sampler = sampler
        self._draft = draft
        self._row = -1
        self.drafted = 0
        self.accepted = 0
        self._forced: list[int] = []
        self.cells: Cells = HomeCells(llm)
        self._prompt: list[int] | None = tokens
        self._ready: deque[tuple[int, int]] = deque()  # (token, logits row), not handed out
        self._last = -1  # the last token sampled, whose cells are not decoded yet
        self._step: tuple[list[int], list[int], int] = ([], [], 0)  # tokens, guess, first row

    def __next__(self) -> int:
        if not self._ready:
            self._advance()
        token, self._row = self._ready.popleft()
        if self._draft is not None:
            self._draft.push(token)
        self._last = token
        return token

    @property
    def drafting(self) -> bool:
        """Whether prompt-lookup drafts are proposed."""
        return self._draft is not None

    @property
    def pending(self) -> bool:
        """Sampled tokens wait to be handed out."""
        return bool(self._ready)

    def hold_grammar(self, held: bool) -> None:
        """Sample without the grammar while ``held`` (a thinking model's thought)."""
        self._sampler.free = held

    def force(self, tokens: Sequence[int]) -> None:
        """Read ``tokens`` after the token just yielded, in one batch with it (no draft)."""
        self._forced = list(tokens)

    def logits(self) -> np.ndarray:
        """The logits that sampled the last token (a view, valid until the next is asked for)."""
        llm = self._llm
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(native.context(llm), self._row),
                                     shape=(llm.n_vocab(),))

    def move(self, cells: Cells) -> None:
        """Go on in ``cells`` (a lane that holds what this answer's sequence held)."""
        self.cells = cells

    def board(self, batch: native.Batch) -> None:
        """Add this answer's next tokens to ``batch`` (everything sampled was handed out)."""
        guess = self._propose()
        tokens = [self._last, *(guess or self._forced)]
        if not guess:
            self._forced = []
        n, seq = self.cells.n, self.cells.seq
        first = len(batch)
        for i, token in enumerate(tokens):
            batch.add(token, n + i, seq, bool(guess) or i == len(tokens) - 1)
        self._step = (tokens, guess, first)

    def alight(self) -> None:
        """``batch`` was decoded: sample this answer's next token(s) from its rows."""
        tokens, guess, first = self._step
        n = self.cells.n
        self.cells.added(tokens, live=True)
        if guess:
            self._sample_verified(first, n, guess)
        else:
            row = first + len(tokens) - 1
            self._ready.append((self._sampler.sample(row), row))

    def _advance(self) -> None:
        """Decode what comes next on our own (sequence 0), and sample."""
        llm = self._llm
        if self._prompt is not None:
            tokens, self._prompt = self._prompt, None
            pending = _reuse_prefix(llm, tokens)
            if pending:
                native.evaluate(llm, pending)
            if self._draft is not None:
                self._draft.start(tokens)
        else:
            guess = self._propose()
            if guess:
                # Evaluate [last + guess] at once, keeping every row's logits.
                batch, n = [self._last, *guess], llm.n_tokens
                native.drop_kv(llm, n)
                native.decode_with_all_logits(llm, batch, n_past=n)
                self.cells.added(batch, live=True)
                self._sample_verified(0, n, guess)
                return
            llm.eval([self._last, *self._forced])
            self._forced = []
        self._ready.append((self._sampler.sample(-1), -1))

    def _propose(self) -> list[int]:
        """A draft that fits the batch and the context along with the token before it."""
        if self._draft is None:
            return []
        llm = self._llm
        return self._draft.propose(
            min(llm.n_batch, native.context_size(llm) - self.cells.n) - 1)

    def _sample_verified(self, first: int, n: int, guess: list[int]) -> None:
        """[last + guess] sit at rows ``first``...: sample up to the first miss, included."""
        sampled: list[int] = []
        for i in range(len(guess) + 1):
            token = self._sampler.sample(first + i)
            sampled.append(token)
            self._ready.append((token, first + i))
            if i == len(guess) or token != guess[i]:
                break
        self.drafted += len(guess)
        self.accepted += len(sampled) - 1
        assert self._draft is not None
        self._draft.verified(len(guess), len(sampled) - 1)
        # Keep the KV cells of `last` and of the guessed tokens the model agreed with; the
        # token sampled at the miss (or after a full match) is evaluated next time round.
        self.cells.keep(n + len(sampled))
        self.cells.set_live(len(sampled) > len(guess))


def _reuse_prefix(llm: llama_cpp.Llama, tokens: list[int]) -> list[int]:
    """Keep the KV cells ``tokens`` share with the context; the tokens still to evaluate.

    The same rules as ``Llama.generate(reset=True)``: a prompt that is cached
    whole, with its logits live, is sampled at once; one cached whole from a
    restored state replays its last token (restored states carry no logits).
    """
    n = llm.n_tokens
    if n > 0:
        prefix = common_prefix(llm.input_ids[:n].tolist(), tokens)
        if prefix == len(tokens) == n and not native.requires_eval(llm):
            return []
        reuse = prefix - 1 if prefix == len(tokens) else prefix
        if reuse > 0 and native.drop_kv(llm, reuse):
            native.set_n_tokens(llm, reuse)
            return tokens[reuse:]
    llm.reset()
    return tokens

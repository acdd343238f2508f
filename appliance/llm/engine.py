"""The model engine: one GGUF loaded once, answering chat requests token by token.

The engine owns a :class:`llama_cpp.Llama` and runs our own token loop
(:mod:`appliance.llm.decode_loop`: a grammar checked after sampling, and, for
answers that quote their reference text, prompt-lookup drafts verified in one
batch), so that at every token it can

* hand the new text to a callback (streaming),
* consult a *live budget* (the thermal watchdog shortens a running answer),
* notice a cancel request or a new thread count from another thread,

each within one token. The prompt prefix (system prompt, and reference text)
is restored from a :class:`~appliance.llm.prefix_cache.PrefixCache` instead of
being evaluated again. A request may name a LoRA adapter
(:mod:`appliance.llm.adapters`): all are loaded once, switched per request, and
every cached state is kept under the adapter it was computed with. Calls are
serialized: one context serves one generation at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar

import llama_cpp

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.errors import ApplianceError, ModelError, PromptTooLong
from appliance.hardware import parallel_sequences, physical_cores
from appliance.llm import decode_loop, native
from appliance.llm.adapter_files import AdapterFile
from appliance.llm.adapters import AdapterSet
from appliance.llm.answering import Answering, Budget, Limits, PromptRead
from appliance.llm.contention import ThreadGovernor
from appliance.llm.conversation_states import ConversationStates, next_turn
from appliance.llm.decoding import Decoder
from appliance.llm.grammar import grammar_for
from appliance.llm.kv_disk import DiskKvCache
from appliance.llm.kv_state import FLASH_ATTENTION
from appliance.llm.lanes import Lanes
from appliance.llm.lookup import PromptLookup
from appliance.llm.memory import check_fits, kv_sequences
from appliance.llm.native_log import route_native_logs
from appliance.llm.prefix_cache import PrefixCache, cacheable_prefixes
from appliance.llm.prompt import ChatPrompt, PromptTokens, common_prefix
from appliance.llm.thought import NO_THOUGHT, Share, Thinker, ThoughtPlan
from appliance.llm.together import Outcome, Together
from appliance.llm.types import ChatRequest, Completion, FinishReason, OnChunk
from appliance.logs import bind_request, get_logger

log = get_logger("engine")

PREFILL_STEP = 16
"""Tokens evaluated at a time by :meth:`Engine.prefill`, so that it can yield quickly."""


class Engine:
    """Loads ``model`` with ``settings`` and serves :meth:`complete` calls.

    >>> engine = Engine(settings.llm, resolve_llm(settings))      # doctest: +SKIP
    >>> engine.complete(ChatRequest("What is two plus two?")).text  # doctest: +SKIP
    """

    def __init__(self, settings: LlmSettings, model: ResolvedModel,
                 disk_cache: DiskKvCache | None = None,
                 adapters: Mapping[str, AdapterFile] | None = None,
                 conversation_cache: DiskKvCache | None = None) -> None:
        route_native_logs()
        self.parallel = parallel_sequences(settings.parallel)
        check_fits(model.path, settings.n_ctx, self.parallel)
        self.settings = settings
        self.model_name = model.name
        self.default_threads = (settings.n_threads or physical_cores(),
                                settings.n_threads_batch or settings.n_threads
                                or physical_cores())
        started = time.monotonic()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model.path),
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_threads=self.default_threads[0],
                n_threads_batch=self.default_threads[1],
                seed=settings.seed,
                flash_attn=FLASH_ATTENTION,
                verbose=False,
            )
            if self.parallel > 1:
                native.widen_context(self._llm, settings.n_ctx * kv_sequences(self.parallel),
                                     self.parallel + 2)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{model.path}: cannot load the model: {exc}") from exc
        self.prompt = ChatPrompt(self._llm)
        self.adapters = AdapterSet(self._llm, adapters or {})
        self.thinker = Thinker.of(self._llm, model.entry)  # None: the model does not think
        self._prefixes = PrefixCache(settings.prefix_cache_entries, disk_cache)
        self.states = ConversationStates(conversation_cache)
        self.threads = self.default_threads
        self._wanted_threads = self.default_threads
        # contention: fewer decode threads while the CPU is busy (on_change: the worker's)
        self.governor = ThreadGovernor(self.default_threads[0], adaptive=settings.adaptive_threads)
        self.lock = threading.Lock()  # one caller decodes at a time
        self.together = (Together(self, Lanes(self._llm, self.parallel))
                         if self.parallel > 1 else None)
        log.info("model_loaded", model=self.model_name, path=str(model.path),
                 n_ctx=settings.n_ctx, threads=self.threads[0],
                 load_ms=round((time.monotonic() - started) * 1000))

    @property
    def llama(self) -> llama_cpp.Llama:
        """The underlying :class:`llama_cpp.Llama`, for benchmarks and diagnostics."""
        return self._llm

    def warm_up(self, system_prompt: str | None = None, adapter: str | None = None) -> None:
        """Evaluate and cache the system prompt (under ``adapter``): a fast first question."""
        prefix = self.prompt.prefix_tokens(system_prompt or self.settings.system_prompt)
        with self.lock:
            self._prefixes.restore(self._llm, prefix, variant=self._use(adapter))

    def cache_passage(self, passage: str, system_prompt: str | None = None,
                      adapter: str | None = None) -> int:
        """Compute and keep the state after [system prompt + ``passage``]; tokens evaluated."""
        request = ChatRequest("", system_prompt=system_prompt, context=(passage,))
        with self.lock:
            variant = self._use(adapter)
            return self._restore(*cacheable_prefixes(*self._render(request)), variant)[1]

    def _use(self, adapter: str | None) -> str:
        """Switch to ``adapter`` (``None``: none); the variant states are now kept under.

        On a change the context is emptied: its KV cells were computed under the
        adapter before, and would be silently wrong under this one.
        """
        if self.adapters.activate(self._llm, adapter):
            self._llm.reset()
            native.drop_kv(self._llm, 0)
        return self.adapters.variant

    def set_threads(self, n_threads: int | None, n_threads_batch: int | None) -> None:
        """Decode and batch threads from the next token on (``None``: the configured count).

        Safe from any thread; a running generation applies it between two tokens.
        """
        self._wanted_threads = (n_threads or self.default_threads[0],
                                n_threads_batch or self.default_threads[1])
        self.governor.cap(n_threads)  # contention: the heat's count is its ceiling

    def set_parallel(self, parallel: int | None) -> None:
        """Decode at most ``parallel`` answers together (``None``: ``llm.parallel``).

        Safe from any thread; the heat's cap. The answers above it wait, their
        cells kept, from the next step on: the most urgent go on.
        """
        if self.together is not None:
            self.together.lanes.cap = parallel

    def apply_threads(self) -> None:
        wanted = self.governor.applied(self._wanted_threads)  # contention: fewer while busy
        if wanted != self.threads:
            native.set_threads(self._llm, *wanted)
            log.info("threads_changed", n_threads=wanted[0], n_threads_batch=wanted[1],
                     was=self.threads[0], reason=self.governor.reason)
            self.threads = wanted

    def _system(self, request: ChatRequest) -> str:
        """The request's system prompt, or the configured one."""
        return (request.system_prompt if request.system_prompt is not None
                else self.settings.system_prompt)

    def _render(self, request: ChatRequest,
                plan: ThoughtPlan = NO_THOUGHT) -> tuple[PromptTokens, tuple[int, ...]]:
        """The prompt, and the prefix every prompt with its system message and turns shares.

        Earlier turns that would leave too little room for the answer's budget
        in ``llm.n_ctx`` are dropped, the oldest exchange first; the system
        prompt, the passages and the question always stay.
        """
        system = self._system(request)
        prompt, history = self.prompt.fit(
            system, plan.question(request.text), request.history, request.context,
            self.settings.n_ctx - (request.max_tokens or self.settings.max_tokens))
        if len(history) < len(request.history):
            log.info("history_trimmed", dropped=len(request.history) - len(history),
                     kept=len(history), prompt_tokens=len(prompt.tokens))
        prompt = replace(prompt, tokens=prompt.tokens + plan.suffix)  # a thought opened, or not
        return prompt, self.prompt.prefix_tokens(system, history)

    def _restore(self, prefix: tuple[int, ...], base: tuple[int, ...],
                 variant: str, floor: int = 0) -> tuple[int, int]:
        if not prefix:
            self._llm.reset()
            return 0, 0
        return self._prefixes.restore(self._llm, prefix, base, variant, floor)

    def prefill(self, request: ChatRequest, pending: Callable[[], bool]) -> tuple[int, int]:
        """Read ``request``'s prompt (its question so far, the turn closed) without answering.

        The turn's closing tokens are read too: when the final question is the
        one read ahead, the answer then starts at once. Evaluates
        :data:`PREFILL_STEP` tokens at a time and stops as soon as ``pending()``
        says real work is waiting. A later :meth:`complete` whose
        prompt starts the same way evaluates only the rest. Returns ``(tokens
        in the cache that match, tokens evaluated now)``.
        """
        with self.lock:
            self.apply_threads()
            variant = self._use(request.adapter)
            rendered = self._render(request)
            wanted = rendered[0].tokens
            if len(wanted) >= self.settings.n_ctx:
                return 0, 0
            llm = self._llm
            self._restore(*cacheable_prefixes(*rendered), variant, rendered[0].first_turn_end)
            keep = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), wanted)
            native.set_n_tokens(llm, keep)
            native.drop_kv(llm, keep, seq=0)
            evaluated = 0
            while llm.n_tokens < len(wanted) and not pending():
                step = wanted[llm.n_tokens: llm.n_tokens + PREFILL_STEP]
                native.evaluate(llm, step)
                evaluated += len(step)
            return llm.n_tokens, evaluated

    def complete(
        self,
        request: ChatRequest,
        *,
        on_chunk: OnChunk | None = None,
        cancel: threading.Event | None = None,
        budget: Budget | None = None,
        thinking_share: Share | None = None,
    ) -> Completion:
        """Answer ``request``, calling ``on_chunk`` with text as it is generated.

        ``budget`` is called at every token; when it returns fewer tokens than
        the request allows, the answer ends at the first sentence end past 60 %
        of it, or at the budget itself, with ``finish_reason="throttled"``.
        Setting ``cancel`` (from any thread) stops it with ``"cancelled"``.
        Both take effect within one token, and the chunks always join up to
        exactly the answer's text. A thinking model thinks for at most
        ``request.thinking_budget`` x ``thinking_share()`` tokens, read live
        (:mod:`appliance.llm.thought`); its thought is never part of the answer.
        With ``llm.parallel`` above 1 it is decoded beside whatever else was
        submitted to :attr:`together`.
        """
        if self.together is not None:
            outcome: list[Outcome] = []
            self.together.submit(request, outcome.append, on_chunk=on_chunk, cancel=cancel,
                                 budget=budget, thinking_share=thinking_share)
            while not outcome:
                self.together.step()
            if isinstance(outcome[0], ApplianceError):
                raise outcome[0]
            return outcome[0]
        with self.lock, bind_request(request.id):
            answering = self.begin(request, on_chunk, cancel, budget, thinking_share)
            if isinstance(answering, Completion):
                return answering
            steps = self.governor.steps(timed=not answering.generation.drafting)  # contention

            def between() -> None:
                steps.tick(self.threads[0])  # contention
                self.apply_threads()

            answering.run_alone(between)
            return self.end(answering)

    def begin(self, request: ChatRequest, on_chunk: OnChunk | None,
               cancel: threading.Event | None, budget: Budget | None,
               share: Share | None) -> Answering | Completion:
        """Everything before the first token: the prompt read, the generation made.

        A :class:`Completion` when there is nothing to generate (cancelled already).
        """
        s, llm = self.settings, self._llm
        started = time.monotonic()
        self.apply_threads()
        variant = self._use(request.adapter)
        plan = ThoughtPlan.of(self.thinker, request, share or (lambda: 1.0))
        rendered = self._render(request, plan)
        tokens = rendered[0].tokens
        limit = request.max_tokens or s.max_tokens
        room = s.n_ctx - len(tokens)
        if room < 1:
            raise PromptTooLong(f"the prompt has {len(tokens)} tokens, more than llm.n_ctx "
                             f"({s.n_ctx}) allows; shorten it or raise llm.n_ctx")
        if cancel is not None and cancel.is_set():
            return self.result(request, Decoder.empty(), "cancelled", started, started,
                                len(tokens), 0, 0)
        self.states.before(self._llm, rendered[0], variant)
        cached, fresh = self._restore(*cacheable_prefixes(*rendered), variant,
                                      rendered[0].first_turn_end)
        # Tokens read for this answer: what the prefix cache had to evaluate, and whatever
        # the KV cache does not hold yet. A prompt held whole with its logits live (a
        # prefilled final question) is sampled at once; otherwise at least one is replayed.
        reused = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens)
        live = reused == len(tokens) == llm.n_tokens and not native.requires_eval(llm)
        evaluated = fresh + (0 if live else max(1, len(tokens) - reused))
        sampling = request.sampling
        llm.set_seed(sampling.seed if sampling.seed is not None else s.seed)
        generation = decode_loop.generate(
            llm, tokens,
            temp=_pick(sampling.temperature, s.temperature),
            top_p=_pick(sampling.top_p, s.top_p), top_k=_pick(sampling.top_k, s.top_k),
            repeat_penalty=_pick(sampling.repeat_penalty, s.repeat_penalty),
            frequency_penalty=_pick(sampling.frequency_penalty, s.frequency_penalty),
            presence_penalty=_pick(sampling.presence_penalty, s.presence_penalty),
            grammar=grammar_for(request.json_schema),
            draft=PromptLookup() if request.prompt_lookup and plan.state == "answer" else None)
        allowed = min(limit, room)
        return Answering(
            request, generation, Decoder(llm, request, on_chunk, generation.logits),
            plan.start(generation, room, allowed),
            Limits(limit, allowed, room, budget, cancel), started,
            PromptRead(variant, len(tokens), cached, evaluated))

    def end(self, answering: Answering) -> Completion:
        """The completion of an answer that has ended; a conversation's turn is kept."""
        request, generation, prompt = answering.request, answering.generation, answering.prompt
        assert answering.finish is not None
        result = answering.thought.into(replace(
            self.result(request, answering.decoder, answering.finish, answering.started,
                         answering.first_at, prompt.tokens, prompt.cached, prompt.evaluated),
            drafted=generation.drafted, accepted=generation.accepted))
        log.info("completed", tokens=result.tokens, finish_reason=result.finish_reason,
                 ttft_ms=round(result.ttft_ms), tokens_per_s=round(result.tokens_per_s, 2),
                 cached_tokens=prompt.cached, evaluated_tokens=prompt.evaluated,
                 prompt_tokens=prompt.tokens, drafted=result.drafted, accepted=result.accepted,
                 thinking_tokens=result.thinking_tokens)
        if request.keep_state:
            self.states.settle(self._llm, next_turn(self.prompt, self._system(request), request,
                                                    result.text), prompt.variant)
        return result

    def result(self, request: ChatRequest, decoder: Decoder, finish: FinishReason,
                started: float, first_at: float | None, prompt_tokens: int,
                cached: int, evaluated: int) -> Completion:
        ended = time.monotonic()
        first = first_at if first_at is not None else ended
        n = decoder.count
        rate = (n - 1) / (ended - first) if n > 1 and ended > first else 0.0
        return Completion(
            id=request.id, text=decoder.text, tokens=n, finish_reason=finish,
            ttft_ms=(first - started) * 1000, tokens_per_s=rate, model=self.model_name,
            total_ms=(ended - started) * 1000, prompt_tokens=prompt_tokens,
            cached_tokens=cached, evaluated_tokens=evaluated, n_threads=self.threads[0],
            confidence=decoder.confidence, low_confidence=decoder.low_confidence,
        )

    def close(self) -> None:
        """Free the model's memory."""
        self._llm.close()


T = TypeVar("T")


def _pick(override: T | None, default: T) -> T:
    return default if override is None else override

"""The model engine: one GGUF loaded once, answering chat requests token by token.

The engine owns a :class:`llama_cpp.Llama` and runs our own decoding loop on
top of :meth:`llama_cpp.Llama.generate`, so that at every token it can

* hand the new text to a callback (streaming),
* consult a *live budget* (the thermal watchdog shortens a running answer),
* notice a cancel request from another thread,

each within one token. The system prompt's KV state is restored from a
:class:`~appliance.llm.prefix_cache.PrefixCache` instead of being evaluated again.
Calls are serialized: one context serves one generation at a time.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable

import llama_cpp

from appliance.catalog import ResolvedModel
from appliance.config.schema import LlmSettings
from appliance.errors import ModelError
from appliance.hardware import physical_cores
from appliance.llm.memory import check_fits
from appliance.llm.native_log import route_native_logs
from appliance.llm.prefix_cache import PrefixCache
from appliance.llm.prompt import ChatPrompt
from appliance.llm.types import ChatRequest, Chunk, Completion, FinishReason
from appliance.logs import bind_request, get_logger

ChunkCallback = Callable[[Chunk], None]
Budget = Callable[[], int]

log = get_logger("engine")


class Engine:
    """Loads ``model`` with ``settings`` and serves :meth:`complete` calls.

    >>> engine = Engine(settings.llm, resolve_llm(settings))      # doctest: +SKIP
    >>> engine.complete(ChatRequest("What is two plus two?")).text  # doctest: +SKIP
    """

    def __init__(self, settings: LlmSettings, model: ResolvedModel) -> None:
        route_native_logs()
        check_fits(model.path, settings.n_ctx)
        self.settings = settings
        self.model_name = model.name
        threads = settings.n_threads or physical_cores()
        started = time.monotonic()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model.path),
                n_ctx=settings.n_ctx,
                n_batch=settings.n_batch,
                n_threads=threads,
                n_threads_batch=settings.n_threads_batch or threads,
                seed=settings.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{model.path}: cannot load the model: {exc}") from exc
        self._prompt = ChatPrompt(self._llm)
        self._prefixes = PrefixCache(settings.prefix_cache_entries)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm._model.model)
        self._lock = threading.Lock()
        log.info("model_loaded", model=self.model_name, path=str(model.path),
                 n_ctx=settings.n_ctx, threads=threads,
                 load_ms=round((time.monotonic() - started) * 1000))

    @property
    def llama(self) -> llama_cpp.Llama:
        """The underlying :class:`llama_cpp.Llama`, for benchmarks and diagnostics."""
        return self._llm

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Evaluate and cache the system prompt now, so the first question is fast too."""
        prefix = self._prompt.prefix_tokens(system_prompt or self.settings.system_prompt)
        with self._lock:
            self._prefixes.restore(self._llm, prefix)

    def complete(
        self,
        request: ChatRequest,
        *,
        on_chunk: ChunkCallback | None = None,
        cancel: threading.Event | None = None,
        budget: Budget | None = None,
    ) -> Completion:
        """Answer ``request``, calling ``on_chunk`` with text as it is generated.

        ``budget`` is called at every token; when it returns fewer tokens than
        the request allows and the answer reaches it, generation stops with
        ``finish_reason="throttled"``. Setting ``cancel`` (from any thread)
        stops it with ``"cancelled"``. Both take effect within one token.
        """
        with self._lock, bind_request(request.id):
            return self._complete(request, on_chunk, cancel, budget)

    def _complete(self, request: ChatRequest, on_chunk: ChunkCallback | None,
                  cancel: threading.Event | None, budget: Budget | None) -> Completion:
        s, llm = self.settings, self._llm
        started = time.monotonic()
        system = request.system_prompt if request.system_prompt is not None else s.system_prompt
        tokens = self._prompt.tokens(system, request.text)
        limit = request.max_tokens or s.max_tokens
        room = s.n_ctx - len(tokens)
        if room < 1:
            raise ModelError(f"the prompt has {len(tokens)} tokens, more than llm.n_ctx "
                             f"({s.n_ctx}) allows; shorten it or raise llm.n_ctx")
        if cancel is not None and cancel.is_set():
            return self._result(request, "", 0, "cancelled", started, None, started, len(tokens), 0)
        prefix = self._prompt.prefix_tokens(system)
        cached = (self._prefixes.restore(llm, prefix)
                  if tuple(tokens[: len(prefix)]) == prefix else 0)
        if not cached and not self._prefixes.capacity:
            llm.reset()
        llm.set_seed(s.seed)

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[int] = []
        parts: list[str] = []
        finish: FinishReason = "length"
        first_at: float | None = None
        for token in llm.generate(tokens, temp=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                  reset=True):
            if first_at is None:
                first_at = time.monotonic()
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            piece = decoder.decode(llm.detokenize([token], prev_tokens=out))
            out.append(token)
            if piece:
                if on_chunk is not None:
                    on_chunk(Chunk(request.id, len(parts), piece))
                parts.append(piece)
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            allowed = min(limit, room)
            live = budget() if budget is not None else limit
            if live < allowed and len(out) >= live:
                finish = "throttled"
                break
            if len(out) >= allowed:
                break
        if tail := decoder.decode(b"", final=True):
            if on_chunk is not None:
                on_chunk(Chunk(request.id, len(parts), tail))
            parts.append(tail)
        text = "".join(parts)
        if finish == "throttled":
            text = _end_at_sentence(text)
        result = self._result(request, text, len(out), finish, started, first_at,
                              time.monotonic(), len(tokens), cached)
        log.info("completed", tokens=result.tokens, finish_reason=finish,
                 ttft_ms=round(result.ttft_ms), tokens_per_s=round(result.tokens_per_s, 2),
                 cached_tokens=cached, prompt_tokens=len(tokens))
        return result

    def _result(self, request: ChatRequest, text: str, n: int, finish: FinishReason,
                started: float, first_at: float | None, ended: float, prompt_tokens: int,
                cached: int) -> Completion:
        first = first_at if first_at is not None else ended
        rate = (n - 1) / (ended - first) if n > 1 and ended > first else 0.0
        return Completion(
            id=request.id, text=text.strip(), tokens=n, finish_reason=finish,
            ttft_ms=(first - started) * 1000, tokens_per_s=rate, model=self.model_name,
            total_ms=(ended - started) * 1000,
            prompt_tokens=prompt_tokens, cached_tokens=cached,
        )

    def close(self) -> None:
        """Free the model's memory."""
        self._llm.close()


def _end_at_sentence(text: str, near: float = 0.6) -> str:
    """A cut answer ends at its last sentence end when that is near the cut (past ``near``)."""
    end = max(text.rfind(mark) for mark in (". ", "! ", "? ", ".\n", "!\n", "?\n"))
    return text[: end + 1] if end >= near * len(text.rstrip()) else text

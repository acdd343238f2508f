"""The model engine on the real SmolLM2 GGUF: streaming, budgets, cancel, prefix cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.catalog import ResolvedModel
from appliance.errors import ModelError, ResourceError
from appliance.llm import ChatRequest, Chunk, Engine
from appliance.llm.memory import check_fits, plan
from appliance.llm.prompt import common_prefix
from appliance.llm.types import Confidence, Sampling, Turn
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

STORY = "Tell me a long story about a dragon and a knight."


def test_streamed_chunks_join_to_the_answer(engine: Engine) -> None:
    chunks: list[Chunk] = []
    result = engine.complete(ChatRequest("What is two plus two?", max_tokens=16),
                             on_chunk=chunks.append)
    assert result.tokens > 0
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks).strip() == result.text
    assert result.finish_reason in ("stop", "length")
    assert result.ttft_ms > 0 and result.model == "smollm2-135m-instruct-q4_1"


def test_greedy_decoding_is_repeatable(engine: Engine) -> None:
    first = engine.complete(ChatRequest("Name a colour."))
    engine.complete(ChatRequest("Something else entirely, please.", max_tokens=4))
    again = engine.complete(ChatRequest("Name a colour."))
    assert first.text == again.text and first.tokens == again.tokens


def test_max_tokens_gives_length(engine: Engine) -> None:
    result = engine.complete(ChatRequest(STORY, max_tokens=7))
    assert result.tokens == 7 and result.finish_reason == "length"


def test_live_budget_cuts_a_running_generation(engine: Engine) -> None:
    seen: list[int] = []
    budget = {"tokens": 200}

    def on_chunk(chunk: Chunk) -> None:
        seen.append(chunk.seq)
        if len(seen) == 12:  # the watchdog lowers the budget mid-stream
            budget["tokens"] = 15

    chunks: list[Chunk] = []
    result = engine.complete(ChatRequest(STORY, max_tokens=200),
                             on_chunk=lambda c: (on_chunk(c), chunks.append(c)),
                             budget=lambda: budget["tokens"])
    assert result.finish_reason == "throttled"
    # At the budget, or earlier at a sentence end past 60 % of it (never trimmed afterwards).
    assert 12 <= result.tokens <= 16
    assert result.tokens >= 15 or result.text.endswith((".", "!", "?"))
    assert "".join(c.delta for c in chunks).strip() == result.text


def test_budget_already_below_output_stops_at_the_next_token(engine: Engine) -> None:
    calls = {"n": 0}

    def budget() -> int:
        calls["n"] += 1
        return 200 if calls["n"] < 20 else 3  # lowered after 19 tokens were made

    result = engine.complete(ChatRequest(STORY, max_tokens=200), budget=budget)
    assert result.finish_reason == "throttled" and result.tokens == 20


def test_cancel_from_another_thread(engine: Engine) -> None:
    cancel = threading.Event()
    started = threading.Event()
    tokens_at_cancel: list[int] = []

    def on_chunk(chunk: Chunk) -> None:
        started.set()

    def canceller() -> None:
        started.wait(30)
        tokens_at_cancel.append(1)
        cancel.set()

    t = threading.Thread(target=canceller)
    t.start()
    result = engine.complete(ChatRequest(STORY, max_tokens=400), on_chunk=on_chunk,
                             cancel=cancel)
    t.join()
    assert result.finish_reason == "cancelled"
    assert result.tokens < 400


def test_cancelled_before_start_generates_nothing(engine: Engine) -> None:
    cancel = threading.Event()
    cancel.set()
    result = engine.complete(ChatRequest(STORY), cancel=cancel)
    assert result.finish_reason == "cancelled" and result.tokens == 0


def test_prefix_cache_reuses_the_system_prompt(engine: Engine) -> None:
    system = "You are a kiosk in a garden centre. " * 20
    # A few tokens each: the cache holds prompts, not answers.
    engine.complete(ChatRequest("Hello.", system_prompt=system, max_tokens=4))
    engine.complete(ChatRequest("Other prompt.", system_prompt="Be terse.", max_tokens=4))
    result = engine.complete(ChatRequest("Where are the roses?", system_prompt=system,
                                         max_tokens=4))
    assert result.cached_tokens > 100  # restored from the cache, not evaluated again
    assert result.cached_tokens < result.prompt_tokens


def test_cached_and_uncached_answers_are_identical(engine: Engine, model_path: Path,
                                                   tmp_path: Path) -> None:
    settings = make_settings(model_path, tmp_path, {"prefix_cache_entries": 0})
    uncached = Engine(settings.llm, ResolvedModel(model_path, "smollm2", None))
    engine.warm_up()
    try:
        for question in ("Why is the sky blue?", "How do I water tomatoes?"):
            # 24 tokens: the cache decides the state the answer starts from, so a
            # restored prompt that differs shows from the first tokens on.
            cold = uncached.complete(ChatRequest(question, max_tokens=24))
            warm = engine.complete(ChatRequest(question, max_tokens=24))
            assert cold.cached_tokens == 0 and warm.cached_tokens > 0
            assert cold.text == warm.text
    finally:
        uncached.close()


def test_prompt_longer_than_the_context_is_refused(engine: Engine) -> None:
    with pytest.raises(ModelError, match=r"more than llm\.n_ctx"):
        engine.complete(ChatRequest("word " * 2000))


def test_unloadable_model_is_a_model_error(tmp_path: Path, model_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 100)
    settings = make_settings(model_path, tmp_path)
    with pytest.raises(ModelError, match="not a GGUF file"):
        Engine(settings.llm, ResolvedModel(junk, "junk", None))


def test_oversized_context_is_refused_before_loading(tmp_path: Path, model_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 1048576 kB\n")  # 1 GiB
    assert check_fits(model_path, 2048, meminfo=meminfo).total_bytes < 1 << 30
    with pytest.raises(ResourceError) as info:
        check_fits(model_path, 131072, meminfo=meminfo)
    message = str(info.value)
    fits = plan(model_path, 0).largest_n_ctx(1 << 30)
    assert f"the largest llm.n_ctx that fits is {fits}" in message
    assert "llm.n_ctx 131072" in message and 2048 < fits < 131072


def test_a_throttled_answer_ends_at_a_sentence_end_and_its_chunks_are_the_answer(
        engine: Engine) -> None:
    chunks: list[Chunk] = []
    result = engine.complete(ChatRequest(STORY, max_tokens=200), on_chunk=chunks.append,
                             budget=lambda: 60)
    assert result.finish_reason == "throttled"
    assert result.tokens <= 60
    assert result.tokens == 60 or result.text.endswith((".", "!", "?"))
    assert "".join(c.delta for c in chunks).strip() == result.text


def test_stop_strings_end_the_answer_and_never_reach_the_stream(engine: Engine) -> None:
    free = engine.complete(ChatRequest(STORY, max_tokens=16))  # a dozen words
    words = free.text.split()
    assert len(words) > 6
    stop = " ".join(words[3:5])
    chunks: list[Chunk] = []
    cut = engine.complete(ChatRequest(STORY, max_tokens=16, stop=(stop,)),
                          on_chunk=chunks.append)
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and free.text.startswith(cut.text)
    assert "".join(c.delta for c in chunks).strip() == cut.text


def test_prefill_leaves_only_the_rest_of_the_question_to_evaluate(engine: Engine) -> None:
    # A few tokens each: what is evaluated is the prompt, whatever the answer's length.
    final = ChatRequest("Please tell me how to water the tomatoes in the greenhouse.",
                        max_tokens=4)
    partial = ChatRequest("Please tell me how to water the tomatoes")
    cold = engine.complete(final)
    engine.complete(ChatRequest("Something unrelated first.", max_tokens=4))
    in_cache, evaluated = engine.prefill(partial, pending=lambda: False)
    assert evaluated > 0 and in_cache > evaluated
    warm = engine.complete(final)
    system = engine.settings.system_prompt
    final_tokens = engine.prompt.tokens(system, final.text)
    shared = common_prefix(engine.prompt.tokens(system, partial.text), final_tokens)
    rest = len(final_tokens) - shared
    assert warm.evaluated_tokens <= rest + 1  # +1: a partial last word re-tokenizes
    assert warm.evaluated_tokens < cold.evaluated_tokens


def test_a_prefilled_final_question_leaves_nothing_to_read(engine: Engine) -> None:
    question = ChatRequest("How long should the greenhouse vent stay open in summer?",
                           max_tokens=4)
    engine.complete(ChatRequest("Something unrelated first.", max_tokens=4))
    engine.prefill(question, pending=lambda: False)  # the turn's closing tokens too
    warm = engine.complete(question)
    assert warm.evaluated_tokens == 0 and warm.tokens > 0  # sampled from the live logits


def test_prefill_yields_to_pending_work(engine: Engine) -> None:
    _, evaluated = engine.prefill(ChatRequest("word " * 200), pending=lambda: True)
    assert evaluated == 0


def test_low_confidence_stops_after_the_watched_tokens(engine: Engine) -> None:
    watched = engine.complete(ChatRequest(STORY, max_tokens=100,
                                          confidence=Confidence(tokens=8, below=0.0)))
    assert watched.low_confidence and watched.finish_reason == "cancelled"
    assert watched.tokens == 7  # the 8th token decided it; it is not part of the answer
    assert watched.confidence is not None and watched.confidence < 0.0
    relaxed = engine.complete(ChatRequest(STORY, max_tokens=20,
                                          confidence=Confidence(tokens=8, below=-100.0)))
    assert not relaxed.low_confidence and relaxed.tokens == 20


@pytest.fixture
def two_thread_engine(model_path: Path, tmp_path: Path) -> Iterator[Engine]:
    """An engine of two decode threads (the shared one has the tests' one thread).

    The prompt is evaluated by one thread: two of them would spin against the
    other test process on a two-core machine.
    """
    eng = Engine(make_settings(model_path, tmp_path, {"n_threads": 2, "n_threads_batch": 1}).llm,
                 ResolvedModel(model_path, "smollm2-135m-instruct-q4_1", None))
    yield eng
    eng.close()


def test_thread_count_changes_between_tokens(two_thread_engine: Engine) -> None:
    engine = two_thread_engine
    seen: list[int] = []

    def on_chunk(chunk: Chunk) -> None:
        seen.append(engine.threads[0])
        if chunk.seq == 3:
            engine.set_threads(1, None)

    try:
        result = engine.complete(ChatRequest(STORY, max_tokens=10), on_chunk=on_chunk)
        assert seen[0] == engine.default_threads[0] and seen[-1] == 1
        assert result.n_threads == 1
        assert engine.llama._ctx.ctx is not None
    finally:
        engine.set_threads(None, None)
    assert engine.complete(ChatRequest("Hi.", max_tokens=3)).n_threads == \
        engine.default_threads[0]


def test_json_schema_output_always_parses(engine: Engine) -> None:
    schema = json.dumps({"type": "object", "properties": {
        "action": {"enum": ["fan_on", "fan_off"]},
        "minutes": {"type": "integer", "minimum": 1, "maximum": 60}},
        "required": ["action", "minutes"], "additionalProperties": False})
    for question in ("Turn on the fan.", "It is cold.", "Tell me a story."):
        result = engine.complete(ChatRequest(question, max_tokens=40, json_schema=schema))
        data = json.loads(result.text)
        assert data["action"] in ("fan_on", "fan_off") and isinstance(data["minutes"], int)


def test_history_and_sampling_overrides(engine: Engine) -> None:
    history = (Turn("user", "My name is Ada."), Turn("assistant", "Hello Ada."))
    first = engine.complete(ChatRequest("What is my name?", history=history, max_tokens=12))
    assert first.evaluated_tokens == first.prompt_tokens  # nothing of it was cached yet
    # Repeated with the same batches (the prompt now cached), greedy output repeats.
    a = engine.complete(ChatRequest("What is my name?", history=history, max_tokens=12))
    b = engine.complete(ChatRequest("What is my name?", history=history, max_tokens=12))
    assert a.text == b.text and a.prompt_tokens > 20 and a.evaluated_tokens == 1
    hot = [engine.complete(ChatRequest(STORY, max_tokens=12,
                                       sampling=Sampling(temperature=1.5, seed=s))).text
           for s in (1, 2, 3)]
    assert len(set(hot)) > 1  # sampled, not greedy

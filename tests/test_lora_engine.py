"""LoRA adapters in the engine: loaded once, switched per request, and known to the KV caches.

The adapters are written for the real SmolLM2 test model the way
``convert_lora_to_gguf.py`` writes them (:mod:`appliance.bench.lora_files`), on
``attn_q``/``attn_v`` of two blocks, and answers are greedy, so that they can
be compared token for token.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.bench.lora_files import LoraSpec, write_lora
from appliance.catalog import ResolvedModel
from appliance.errors import ModelError
from appliance.llm import ChatRequest, Engine
from appliance.llm.adapter_files import AdapterFile
from appliance.llm.kv_disk import DiskKvCache
from tests.conftest import make_settings

QUESTION = "Name three colours of apples."
PASSAGE = "Water tomatoes at the base, early in the morning, twice a week in summer."

pytestmark = pytest.mark.slow


def _files(root: Path, model: Path) -> dict[str, AdapterFile]:
    specs = {"zero": LoraSpec(b_std=0.0), "a": LoraSpec(seed=1),
             "b": LoraSpec(seed=2, b_std=0.2, blocks=(0, 1, 2, 3))}
    return {name: AdapterFile(name, write_lora(root / f"{name}.gguf", model, spec), 1.0,
                              f"lora:{name}") for name, spec in specs.items()}


def _engine(root: Path, model: Path, **llm: object) -> Engine:
    settings = make_settings(model, root, {"max_tokens": 24, "n_ctx": 512, **llm})
    disk = DiskKvCache(root / "kv", 1 << 26, "smollm2")
    return Engine(settings.llm, ResolvedModel(model, model.stem, None), disk,
                  _files(root, model))


@pytest.fixture(scope="module")
def lora_engine(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Engine]:
    """One engine with three adapters: B = 0, and two random ones."""
    engine = _engine(tmp_path_factory.mktemp("lora_engine"), model_path,
                     prefix_cache_entries=8)
    yield engine
    engine.close()


def _logits(engine: Engine, adapter: str | None) -> np.ndarray:
    """The logits after the question's tokens, evaluated from an empty context."""
    import llama_cpp

    from appliance.llm import native

    llm = engine.llama
    engine.adapters.activate(llm, adapter)
    llm.reset()
    llm.eval(llm.tokenize(QUESTION.encode()))
    row = llama_cpp.llama_get_logits_ith(native.context(llm), -1)
    return np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)),
                                 shape=(llm.n_vocab(),)).copy()


def test_an_adapter_with_zero_b_gives_the_base_logits_and_a_random_one_does_not(
        lora_engine: Engine) -> None:
    base = _logits(lora_engine, None)
    assert np.array_equal(_logits(lora_engine, "zero"), base)
    changed = _logits(lora_engine, "a")
    assert np.abs(changed - base).max() > 1e-2
    assert np.array_equal(_logits(lora_engine, None), base)  # switched back: the base again


def _answer(engine: Engine, adapter: str | None, **fields: object) -> tuple[str, int]:
    done = engine.complete(ChatRequest(QUESTION, adapter=adapter, **fields))  # type: ignore[arg-type]
    return done.text, done.cached_tokens


def test_switching_a_none_a_gives_the_same_greedy_text_each_time(lora_engine: Engine) -> None:
    with_a = [_answer(lora_engine, "a")[0]]
    without = _answer(lora_engine, None)[0]
    with_a.append(_answer(lora_engine, "a")[0])
    assert with_a[0] == with_a[1]
    assert without != with_a[0]
    assert _answer(lora_engine, None)[0] == without


def test_a_cached_system_prompt_is_not_reused_under_another_adapter(
        tmp_path: Path, model_path: Path) -> None:
    engine = _engine(tmp_path, model_path, prefix_cache_entries=4)
    system = len(engine.prompt.prefix_tokens(engine.settings.system_prompt))
    try:
        engine.warm_up()  # the system prompt, cached under the base model
        base_text, cached = _answer(engine, None)
        assert cached == system
        a_text, cached = _answer(engine, "a")
        assert cached == 0, "the base model's system prompt was reused under adapter a"
        assert _answer(engine, "a") == (a_text, system)  # a's own state, reused under a
        b_text, cached = _answer(engine, "b")
        assert cached == 0
        assert len({base_text, a_text, b_text}) == 3
        assert _answer(engine, None) == (base_text, system)  # the base's state, still kept
    finally:
        engine.close()


def test_a_prefill_under_one_adapter_is_not_answered_under_another(
        tmp_path: Path, model_path: Path) -> None:
    engine = _engine(tmp_path, model_path)
    try:
        reference = _answer(engine, "a")[0]
        request = ChatRequest(QUESTION)
        assert engine.prefill(request, pending=lambda: False)[0] > 0  # read under the base
        done = engine.complete(dataclasses.replace(request, adapter="a"))
        assert done.text == reference
        system = len(engine.prompt.prefix_tokens(engine.settings.system_prompt))
        # a's own system prompt state, then the whole question again (the prefill read it
        # under the base model; reusing it would have evaluated one token).
        assert (done.cached_tokens, done.evaluated_tokens) == (system,
                                                               done.prompt_tokens - system)
    finally:
        engine.close()


def test_passage_states_are_kept_per_adapter(tmp_path: Path, model_path: Path) -> None:
    engine = _engine(tmp_path, model_path, prefix_cache_entries=0)  # the disk cache only
    try:
        assert engine.cache_passage(PASSAGE) > 0  # on disk, under the base model
        text, cached = _answer(engine, "a", context=(PASSAGE,))
        assert cached == 0, "a passage state made without the adapter was used under it"
        _answer(engine, None)  # the context now holds something else
        again, cached = _answer(engine, "a", context=(PASSAGE,))
        assert (again, cached > 0) == (text, True)  # a's own state, from disk
        assert _answer(engine, None, context=(PASSAGE,))[1] > 0  # the base's, from disk
    finally:
        engine.close()


def test_an_unknown_adapter_is_one_clear_error(lora_engine: Engine) -> None:
    with pytest.raises(ModelError, match=r"unknown adapter 'nope'; llm.adapters has: zero, a, b"):
        lora_engine.complete(ChatRequest(QUESTION, adapter="nope"))
    assert _answer(lora_engine, None)[0]  # and the engine goes on

"""Answers from the manuals: sources, helpful refusals, and the passage KV cache on disk."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.catalog import ResolvedModel
from appliance.llm import ChatRequest, Engine
from appliance.llm.kv_disk import DiskKvCache, model_identity
from tests.conftest import BASE, make_settings, run_cli
from tests.helpers import smollm2_path, write_config
from tests.services import ApplianceProcess, Broker, Peer

pytestmark = pytest.mark.slow

MANUALS = Path(__file__).parent / "manuals"
PASSAGE = ("From pump.pdf, Maintenance > Cleaning the intake strainer, page 4:\n"
           "Close the inlet valve, unscrew the strainer cap and rinse the mesh under running "
           "water. Refit it hand-tight; an over-tightened cap cracks the housing seal.")
OTHER = ("From greenhouse.md, Ventilation > Roof vents:\nThe roof vents close by themselves "
         "when the wind sensor reads more than 40 km/h, whatever the temperature.")


def _engine(model_path: Path, directory: Path, budget: int = 64 << 20,
            model_key: str | None = None) -> Engine:
    settings = make_settings(model_path, directory)
    disk = DiskKvCache(directory / "kv", budget, model_key or model_identity(model_path))
    return Engine(settings.llm, ResolvedModel(model_path, "smollm2", None), disk)


def test_a_second_question_on_a_passage_evaluates_only_the_question(
        model_path: Path, tmp_path: Path) -> None:
    engine = _engine(model_path, tmp_path)
    try:
        first = engine.complete(ChatRequest("How do I clean the strainer?", max_tokens=8,
                                            context=(PASSAGE,)))
        assert first.evaluated_tokens == first.prompt_tokens  # nothing was cached yet
        second = engine.complete(ChatRequest("Can the cap be tightened hard?", max_tokens=8,
                                             context=(PASSAGE,)))
        prompt = engine.prompt.render(engine.settings.system_prompt,
                                      "Can the cap be tightened hard?", (), (PASSAGE,))
        after_passage = len(prompt.tokens) - prompt.passage_ends[0]
        question = prompt.question_end - prompt.question_at
        assert second.cached_tokens == prompt.passage_ends[0]
        # Only what follows the passage (less the "Question:" lead-in the last one shared).
        assert question <= second.evaluated_tokens <= after_passage
    finally:
        engine.close()
    again = _engine(model_path, tmp_path)  # a restart: the state comes back from disk
    try:
        third = again.complete(ChatRequest("What cracks the seal?", max_tokens=8,
                                           context=(PASSAGE,)))
        assert third.evaluated_tokens < third.prompt_tokens / 2
        assert third.cached_tokens > 40
    finally:
        again.close()


def test_the_top_passage_is_reused_under_a_second_one(model_path: Path,
                                                       tmp_path: Path) -> None:
    engine = _engine(model_path, tmp_path)
    try:
        engine.complete(ChatRequest("How do I clean it?", max_tokens=4, context=(PASSAGE,)))
        both = engine.complete(ChatRequest("And the vents?", max_tokens=4,
                                           context=(PASSAGE, OTHER)))
        prompt = engine.prompt.render(engine.settings.system_prompt, "And the vents?", (),
                                      (PASSAGE, OTHER))
        assert both.cached_tokens == prompt.passage_ends[0]  # P1 restored, P2 evaluated
        assert both.evaluated_tokens <= len(prompt.tokens) - prompt.passage_ends[0]
        assert both.evaluated_tokens > prompt.passage_ends[1] - prompt.passage_ends[0]
    finally:
        engine.close()


def test_a_changed_system_prompt_or_model_never_reuses_a_state(model_path: Path,
                                                               tmp_path: Path) -> None:
    engine = _engine(model_path, tmp_path)
    try:
        engine.complete(ChatRequest("How?", max_tokens=4, context=(PASSAGE,)))
        other = engine.complete(ChatRequest("How?", max_tokens=4, context=(PASSAGE,),
                                            system_prompt="You are terse."))
        assert other.evaluated_tokens == other.prompt_tokens
    finally:
        engine.close()
    renamed = _engine(model_path, tmp_path, model_key="another-model.gguf:1:2")
    try:
        fresh = renamed.complete(ChatRequest("How?", max_tokens=4, context=(PASSAGE,)))
        assert fresh.evaluated_tokens == fresh.prompt_tokens
    finally:
        renamed.close()


def test_the_disk_budget_is_honoured(model_path: Path, tmp_path: Path) -> None:
    probe = _engine(model_path, tmp_path / "probe")
    try:
        probe.cache_passage(PASSAGE)
        one_state = probe._prefixes.disk.used_bytes  # type: ignore[union-attr]
    finally:
        probe.close()
    assert one_state > 0
    budget = int(one_state * 2.5)
    engine = _engine(model_path, tmp_path / "small", budget)
    try:
        for i in range(3):  # room for two: the first goes
            engine.cache_passage(f"{PASSAGE}\nCopy {i} of the passage.")
        disk = engine._prefixes.disk
        assert disk is not None and 0 < disk.used_bytes <= budget
        assert len(list(disk.directory.glob("*.kv"))) == 2
    finally:
        engine.close()


@pytest.fixture(scope="module")
def manuals_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with the test manuals indexed, made once for the module's tests."""
    home = tmp_path_factory.mktemp("index")
    cfg = write_config(home / "index.yaml", base={
        "data_dir": home / "data", "llm": {"model_path": smollm2_path()}})
    done = run_cli("--config", str(cfg), "knowledge", "add",
                   *(str(p) for p in sorted(MANUALS.iterdir())),
                   timeout=600)
    assert done.returncode == 0, done.stderr
    return home / "data"


@pytest.fixture(scope="module")
def librarian(manuals_index: Path, module_start: Callable[..., ApplianceProcess],
              module_broker: Broker) -> Iterator[Peer]:
    """A peer of one device that answers from the test manuals in ``mode: only``.

    With the default ``min_score`` (no ``min_score`` in its config: before issue 22 it
    was null). The tests only ask it, each with its own id: one start (and one load of
    the embedding model), not one each. Its data_dir is the module's index itself.
    """
    peer = Peer(module_broker.port, [f"{BASE}/#"])
    try:
        module_start({"data_dir": manuals_index,
                      "knowledge": {"enabled": True, "mode": "only", "cache_mb": 64}})
        yield peer
    finally:
        peer.close()


def _answer(peer: Peer, request_id: str, text: str, **fields: Any) -> dict[str, Any]:
    peer.publish(f"{BASE}/ask", json.dumps({"id": request_id, "text": text, **fields}))
    return peer.wait_for(lambda m: m.topic == f"{BASE}/answer"
                         and m.json()["id"] == request_id, 90).json()


def test_an_ask_is_answered_with_its_sources(librarian: Peer) -> None:
    # A question the manuals cover: answered in "only" mode as in "assist" mode.
    answer = _answer(librarian, "k1", "How deep do the moisture probes go into the ground?",
                     max_tokens=24)
    assert answer["tokens"] > 0 and answer["sources"]
    assert answer["sources"][0]["doc"] == "greenhouse.md"
    assert "Soil moisture" in answer["sources"][0]["section"]


def test_mode_only_refuses_what_the_manuals_do_not_cover(librarian: Peer) -> None:
    answer = _answer(librarian, "off", "How do I bake bread?")
    assert answer["tokens"] == 0 and answer["sources"] == []
    assert "do not cover" in answer["text"] and "closest" in answer["text"]
    assert answer["refused"] == "not in the manuals"


def test_mode_only_refuses_an_off_topic_question_with_the_default_min_score(
        librarian: Peer) -> None:
    # No min_score in the config: before issue 22 it was null and this was answered from
    # the nearest passages, with them as sources.
    answer = _answer(librarian, "herbs", "Which herbs suit a lasagna?")
    assert answer["refused"] == "not in the manuals"
    assert answer["tokens"] == 0 and answer["sources"] == []

"""Several answers decoded together (``llm.parallel``): the same answers, each on its own terms."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from appliance.catalog import ResolvedModel
from appliance.errors import ResourceError
from appliance.hardware import mem_available_bytes
from appliance.llm import ChatRequest, Completion
from appliance.llm.engine import Engine
from appliance.llm.memory import check_fits, plan
from appliance.llm.together import Outcome, Together
from appliance.llm.types import Confidence, Turn
from tests.conftest import make_settings
from tests.helpers import write_config

QUESTIONS = ("Tell me about cats.", "What is the moon?", "How is bread made?",
             "Why do rivers flow?")


@pytest.fixture(scope="module")
def lanes_engine(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The test model with three lanes, otherwise set up as the shared ``engine``."""
    settings = make_settings(model_path, tmp_path_factory.mktemp("lanes"), {"parallel": 3})
    eng = Engine(settings.llm, ResolvedModel(model_path, "smollm2-135m-instruct-q4_1", None))
    yield eng
    eng.close()


@pytest.fixture
def together(lanes_engine: Engine) -> Together:
    """What the worker drives with ``parallel`` above 1: submit, then step."""
    assert lanes_engine.together is not None
    return lanes_engine.together


def run_together(together: Together, requests: list[ChatRequest],
                 ended: list[str] | None = None) -> dict[str, Completion]:
    """Submit every request at once and step until all have ended; their completions."""
    outcomes: dict[str, Outcome] = {}

    def done(request_id: str, outcome: Outcome) -> None:
        outcomes[request_id] = outcome
        if ended is not None:
            ended.append(request_id)

    for request in requests:
        together.submit(request, partial(done, request.id))
    while together.busy:
        together.step()
    assert all(isinstance(o, Completion) for o in outcomes.values()), outcomes
    return outcomes  # type: ignore[return-value]


@pytest.mark.slow
def test_one_lane_is_todays_engine(engine: Engine) -> None:
    """``parallel: 1`` decodes alone in sequence 0, with no lanes: today's engine, byte for byte."""
    assert engine.parallel == 1 and engine.together is None


@pytest.mark.slow
def test_an_answer_in_a_lane_is_exactly_the_answer_alone(engine: Engine,
                                                         lanes_engine: Engine) -> None:
    """Alone in a lane (no other answer in its batches), every token's logits are the same.

    A plain question, a grammar-constrained one, one with prompt-lookup drafts over
    a passage, and a follow-up with history: the same text, finish, drafts, and
    log-probabilities to the last bit.
    """
    passage = "The pump stops when the tank is full. Press the blue button to reset it."
    requests = [
        ChatRequest("Tell me about cats.", max_tokens=24, confidence=Confidence(8, -1e9)),
        ChatRequest("Is the sky blue?", max_tokens=24,
                    json_schema='{"type": "object", "properties": {"yes": {"type": "boolean"}},'
                                ' "required": ["yes"]}'),
        ChatRequest("How do I reset the pump?", max_tokens=24, context=(passage,),
                    prompt_lookup=True, confidence=Confidence(8, -1e9)),
    ]
    for request in requests:
        alone, in_lane = engine.complete(request), lanes_engine.complete(request)
        assert (in_lane.text, in_lane.finish_reason, in_lane.tokens) == (
            alone.text, alone.finish_reason, alone.tokens)
        assert (in_lane.drafted, in_lane.accepted, in_lane.confidence) == (
            alone.drafted, alone.accepted, alone.confidence)
    assert requests[2].prompt_lookup and in_lane.drafted > 0  # the last: requests[2]'s


@pytest.mark.slow
def test_a_follow_up_reads_only_what_is_new_as_alone(engine: Engine,
                                                    lanes_engine: Engine) -> None:
    """An answer that ended in a lane is left at home, as alone.

    A follow-up with it in its history then reads only its own question, not the
    answer again.
    """
    for eng in (engine, lanes_engine):
        first = eng.complete(ChatRequest("Tell me about cats.", max_tokens=24))
        follow = eng.complete(ChatRequest("And dogs?", max_tokens=8, history=(
            Turn("user", "Tell me about cats."), Turn("assistant", first.text))))
        assert follow.evaluated_tokens < 16, (eng.parallel, follow.evaluated_tokens)


@pytest.mark.slow
def test_answers_decoded_together_agree_with_each_answer_alone(engine: Engine,
                                                               together: Together) -> None:
    """Four questions over three lanes (the fourth waits for a free one).

    Batching changes how ggml sums (its kernels differ with the batch's shape),
    not which sequence a token belongs to: the first tokens' mean log-probability
    agrees with the answer alone to 0.05 (0.007 at most, measured), where a token
    read into another sequence, or at a wrong position, changes it by whole units.
    """
    requests = [ChatRequest(q, max_tokens=24, confidence=Confidence(8, -1e9), id=f"q{i}")
                for i, q in enumerate(QUESTIONS)]
    alone = {r.id: engine.complete(r) for r in requests}
    decoded = run_together(together, requests)
    for request in requests:
        a, t = alone[request.id], decoded[request.id]
        assert t.finish_reason == a.finish_reason or t.finish_reason in ("stop", "length")
        assert a.confidence is not None and t.confidence is not None
        assert abs(t.confidence - a.confidence) < 0.05, (request.text, a.text, t.text)
        assert t.text.split()[:3] == a.text.split()[:3]


@pytest.mark.slow
def test_a_voice_request_overtakes_full_lanes(together: Together) -> None:
    """Three HTTP answers fill the lanes; a spoken question starts at once and ends first."""
    api = [ChatRequest(q, max_tokens=40, priority=1, id=f"api{i}")
           for i, q in enumerate(QUESTIONS[:3])]
    voice = ChatRequest("What is two plus two?", max_tokens=8, priority=0, id="voice")
    ended: list[str] = []
    outcomes: dict[str, Outcome] = {}

    def done(request_id: str, outcome: Outcome) -> None:
        outcomes[request_id] = outcome
        ended.append(request_id)

    for request in api:
        together.submit(request, partial(done, request.id))
    lanes = together.lanes
    while len(lanes) < 3:
        together.step()
    together.submit(voice, partial(done, voice.id))
    together.step()
    stepped = {lane.answering.request.id for lane in lanes.stepped()}
    assert len(lanes) == 4 and "voice" in stepped and len(stepped) == 3  # one HTTP answer waits
    while together.busy:
        together.step()
    assert ended[0] == "voice"
    for request in api:
        outcome = outcomes[request.id]
        assert isinstance(outcome, Completion) and outcome.finish_reason in ("length", "stop")


@pytest.mark.slow
def test_a_cancel_of_one_answer_leaves_the_others_running(together: Together) -> None:
    cancel = threading.Event()
    requests = [ChatRequest(q, max_tokens=30, id=f"c{i}") for i, q in enumerate(QUESTIONS[:3])]
    outcomes: dict[str, Outcome] = {}
    for request in requests:
        together.submit(request, partial(outcomes.__setitem__, request.id),
                            cancel=cancel if request.id == "c1" else None)
    for _ in range(6):
        together.step()
    cancel.set()
    while together.busy:
        together.step()
    cancelled = outcomes["c1"]
    assert isinstance(cancelled, Completion) and cancelled.finish_reason == "cancelled"
    assert cancelled.tokens < 30
    for request_id in ("c0", "c2"):
        outcome = outcomes[request_id]
        assert isinstance(outcome, Completion) and outcome.finish_reason in ("length", "stop")
        assert outcome.finish_reason == "stop" or outcome.tokens == 30


@pytest.mark.slow
def test_the_heats_cap_decodes_one_answer_at_a_time(lanes_engine: Engine,
                                                     together: Together) -> None:
    """At a level with ``parallel: 1``, the second answer's first words wait for the first's end."""
    events: list[str] = []
    requests = [ChatRequest(q, max_tokens=12, id=f"h{i}") for i, q in enumerate(QUESTIONS[:2])]
    lanes_engine.set_parallel(1)
    try:
        for request in requests:
            together.submit(
                request, lambda o, rid=request.id: events.append(f"done {rid}"),
                on_chunk=lambda c, rid=request.id: events.append(f"chunk {rid}"))
        while together.busy:
            together.step()
    finally:
        lanes_engine.set_parallel(None)
    first_done = events.index("done h0")
    assert "chunk h0" in events[:first_done]
    # h1's prompt was read (and its first token sampled) at home; then it waited its turn.
    assert events[first_done + 1:].count("chunk h1") >= 1
    assert events[:first_done].count("chunk h1") <= 1


@pytest.mark.slow
def test_parallel_times_the_context_must_fit(tmp_path: Path, model_path: Path) -> None:
    """Each answer decoded together has its own ``n_ctx`` of KV cache, and the home one more."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 1048576 kB\n")  # 1 GiB
    assert check_fits(model_path, 4096, meminfo=meminfo).total_bytes < 1 << 30
    with pytest.raises(ResourceError) as info:
        check_fits(model_path, 4096, 8, meminfo=meminfo)
    message = str(info.value)
    assert "llm.n_ctx 4096 x 9 (llm.parallel 8)" in message and "lower llm.parallel" in message


@pytest.mark.slow
def test_config_check_refuses_a_parallel_that_does_not_fit(tmp_path: Path,
                                                           model_path: Path) -> None:
    """A context that fits this machine alone, times 9, does not: ``config check`` says so."""
    per_token = plan(model_path, 1).kv_bytes_per_token
    n_ctx = min(131072, int(mem_available_bytes() * 0.5) // per_token) // 256 * 256
    assert n_ctx >= 256
    config = write_config(tmp_path / "config.yaml",
                          {"llm": {"n_ctx": n_ctx, "parallel": 8}, "mqtt": {"port": 9}})
    done = subprocess.run([sys.executable, "-m", "appliance", "--config", str(config),
                           "config", "check"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode != 0
    assert f"llm.n_ctx {n_ctx} x 9 (llm.parallel 8)" in done.stderr

"""Prefill while the user speaks: the model reads the question from vosk's partial transcripts.

A real supervisor and model worker, the Korean vosk model, and an utterance
of eight words spoken by espeak-ng into a microphone fed at its own pace
(``voice.source: stdin``). The worker reports every prefill (``Prefilled``:
the tokens of the question so far now in its cache), and every completion it
returns says how many prompt tokens it read for it (``evaluated_tokens``), all
of them after the final transcript.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from appliance.bench.broker import LocalBroker
from appliance.config import Settings, load_settings
from appliance.llm import ChatRequest, Completion
from appliance.llm.prompt import ChatPrompt, common_prefix
from appliance.protocol.messages import Request
from appliance.protocol.worker_pipe import Prefilled
from appliance.service.supervisor import Supervisor
from tests.conftest import device_config
from tests.helpers import eventually_async
from tests.services import run_supervisor
from tests.speech import PHRASES, Microphone, korean_model, pcm_of, speak

pytestmark = pytest.mark.slow

GRAMMAR = "[" + ", ".join(PHRASES) + "]"
UTTERANCE = "안녕하세요 날씨 온도 음악 틀어 날씨 온도 안녕하세요 음악 틀어"  # ten words


class Seen:
    """What the controller handed on, and every answer, as the scenario runs."""

    def __init__(self, supervisor: Supervisor) -> None:
        voice = supervisor.voice
        assert voice is not None
        self.prefills: list[tuple[str, bool]] = []  # text, and whether a generation ran
        self.submitted: list[tuple[Request, str | None]] = []  # and the source then running
        self.answers: list[dict[str, Any]] = []
        self.completions: list[Completion] = []  # as the worker returned them
        prefill, submit = voice.prefill, voice.submit
        generate = supervisor.worker.generate

        def on_prefill(text: str) -> None:
            self.prefills.append((text, supervisor.dispatcher.running is not None))
            prefill(text)

        def on_submit(request: Request) -> None:
            running = supervisor.dispatcher.running
            self.submitted.append((request, running.source if running else None))
            submit(request)

        async def on_generate(request: ChatRequest, *args: Any, **kwargs: Any) -> Completion:
            completion = await generate(request, *args, **kwargs)
            self.completions.append(completion)
            return completion

        voice.prefill, voice.submit = on_prefill, on_submit
        supervisor.worker.generate = on_generate  # type: ignore[method-assign]
        supervisor.dispatcher.answer_listeners.append(
            lambda _r, a: self.answers.append(a.to_json()))

    async def answered(self, count: int) -> None:
        await eventually_async(lambda: len(self.answers) >= count, 500, f"{count} answers")


def _run(tmp_path: Path, model_path: Path, port: int,
         scenario: Callable[[Supervisor, Seen], Awaitable[None]], max_tokens: int = 40,
         rules: str = "") -> tuple[Settings, Seen]:
    rest = (f"thermal:\n  zone_path: {tmp_path / 't'}\n"
            f"voice:\n  enabled: true\n  model_path: {korean_model()}\n  grammar: {GRAMMAR}\n"
            "  intents: {멈춰: stop}\n  source: stdin\n  tts: none\n  activation: always\n"
            "  end_silence_s: 0.5\n  prefill: true\n" + rules)
    cfg = device_config(tmp_path, model_path, port, "p1", max_tokens, rest)
    settings = load_settings(cfg)
    seen: list[Seen] = []

    async def action(supervisor: Supervisor) -> None:
        seen.append(Seen(supervisor))
        await scenario(supervisor, seen[0])

    run_supervisor(settings, cfg, None, action)
    return settings, seen[0]


def test_only_what_the_partials_had_not_covered_is_read_after_the_last_word(
        tmp_path: Path, model_path: Path, broker: LocalBroker, mic: Microphone) -> None:
    question = pcm_of(speak(UTTERANCE, tmp_path / "q.wav"))
    prefilled: list[Prefilled] = []

    async def speak_and_wait(supervisor: Supervisor, seen: Seen) -> None:
        mic.say(question)
        await seen.answered(1)
        prefilled.extend(supervisor.worker.prefilled)

    # A short answer: what is measured is the prompt read after the last word.
    settings, seen = _run(tmp_path, model_path, broker.port, speak_and_wait, max_tokens=8)
    (answer,) = seen.answers
    (completion,) = seen.completions
    ((request, _),) = seen.submitted
    assert answer["source"] == "voice" and answer["id"] == request.id != "prefill"
    assert len(request.text.split()) >= 6 and len(seen.prefills) >= 4  # as vosk heard it
    assert prefilled and all(p.id == "prefill" for p in prefilled)
    last = prefilled[-1]
    # The worker's cache holds the question it prefilled last (a later partial may have been
    # dropped unread while the worker was busy); the final may have revised it.
    tokenizer = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    prompt = ChatPrompt(tokenizer)
    final = prompt.render(settings.llm.system_prompt, request.text)
    heard_last = prompt.render(settings.llm.system_prompt, last.text)
    assert completion.id == request.id and len(final.tokens) == completion.prompt_tokens
    kept = common_prefix(final.tokens, heard_last.tokens[: last.tokens])
    not_covered = completion.prompt_tokens - kept
    assert completion.evaluated_tokens <= not_covered
    assert kept > final.question_at  # part of the question was read before its end


def test_a_voice_request_still_preempts_a_sensor_answer_with_prefill_on(
        tmp_path: Path, model_path: Path, broker: LocalBroker, mic: Microphone) -> None:
    rules = ("rules:\n  - name: hot\n    source: greenhouse\n    when: temperature > 40\n"
             "    prompt: Write a very long story about a greenhouse at {temperature} degrees.\n"
             "    min_interval_s: 0\n")
    question = pcm_of(speak("날씨", tmp_path / "q.wav"))

    async def interrupt(supervisor: Supervisor, seen: Seen) -> None:
        dispatcher = supervisor.dispatcher
        assert dispatcher.on_event(supervisor.topics.event("greenhouse"),
                                   {"temperature": 45}) == 1
        await eventually_async(lambda: dispatcher.running is not None, 60,
                               "running sensor generation", 0.01)
        mic.say(question)
        await seen.answered(2)

    # 200 tokens: the story still runs while the question is spoken (about 50 tokens in here),
    # and it is written again whole after the voice answer (489 tokens at 600).
    _, seen = _run(tmp_path, model_path, broker.port, interrupt, 200, rules)
    ((request, running),) = seen.submitted
    assert running == "sensor"  # the voice request came while the sensor answer was written
    assert any(busy for _text, busy in seen.prefills)  # partials came meanwhile, and waited
    voice, alert = seen.answers
    assert voice["id"] == request.id and voice["source"] == "voice"
    assert voice["finish_reason"] in ("stop", "length")
    assert alert["source"] == "sensor" and alert["finish_reason"] in ("stop", "length")
    assert all(a["id"] != "prefill" for a in seen.answers)

"""``appliance listen``: the whole voice pipeline on one WAV file.

Speech is recognized, the first utterance addressed to us is answered by the
model (or by an intent, without it), and the answer is spoken sentence by
sentence while it is still being generated.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.llm import ChatRequest, Chunk, Engine
from appliance.voice.activation import Activation, route
from appliance.voice.audio import wav_chunks
from appliance.voice.kid_safe import KID_MAX_TOKENS, KID_SYSTEM_PROMPT, KidFilter
from appliance.voice.recognizer import load_model, transcribe
from appliance.voice.speech_out import SentenceSplitter, join_wavs, synthesize


@dataclass(frozen=True)
class ListenResult:
    """What was heard and answered, with the latencies from the end of speech."""

    transcript: str
    answer: str
    intent: str | None
    ms_recognize: float
    ms_first_token: float | None
    ms_first_audio: float | None
    ms_first_sentence: float | None = None


def listen(settings: Settings, wav: Path, engine: Engine | None,
           say_to: Path | None = None) -> ListenResult:
    """Run the pipeline; ``engine`` may be ``None`` when only an intent can answer."""
    voice = settings.voice
    model = load_model(voice.model_path)
    started = time.perf_counter()
    finals = [h.text for h in transcribe(model, wav_chunks(wav), voice.grammar,
                                         voice.max_utterance_s) if h.final]
    speech_end = time.perf_counter()
    transcript = " ".join(finals)
    gate = Activation(voice.activation, voice.wake_phrase, voice.wake_window_s)
    if voice.activation == "button":
        gate.press()  # a file given to `listen` is what the button recorded
    intent, request = next((r for r in (route(gate, f, voice.intents) for f in finals)
                            if r != (None, None)), (None, None))

    def ms(at: float | None) -> float | None:
        return None if at is None else round((at - speech_end) * 1000, 1)

    recognize_ms = round((speech_end - started) * 1000, 1)
    if request is None or engine is None:
        return ListenResult(transcript, "", intent, recognize_ms, None, None)

    kid = KidFilter(voice.block_list) if voice.kid_safe else None
    splitter = SentenceSplitter()
    sentences: list[str] = []
    speaking: list[Future[Path]] = []
    first_token: list[float] = []
    first_sentence: list[float] = []
    first_audio: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as tts:

        def speak(sentence: str) -> None:
            if not first_sentence:
                first_sentence.append(time.perf_counter())
            sentence = kid.sentence(sentence) if kid else sentence
            sentences.append(sentence)
            if voice.tts == "none":
                return
            part = Path(tmp) / f"{len(speaking)}.wav"

            def run() -> Path:
                out = synthesize(sentence, voice.tts_voice, part)
                if not first_audio:
                    first_audio.append(time.perf_counter())
                return out

            speaking.append(tts.submit(run))

        def on_chunk(chunk: Chunk) -> None:
            if not first_token:
                first_token.append(time.perf_counter())
            for sentence in splitter.feed(chunk.delta):
                speak(sentence)

        engine.complete(ChatRequest(
            request, system_prompt=KID_SYSTEM_PROMPT if kid else None,
            max_tokens=min(KID_MAX_TOKENS, settings.llm.max_tokens) if kid else None),
            on_chunk=on_chunk)
        for sentence in splitter.flush():
            speak(sentence)
        parts = [f.result() for f in speaking]
        if say_to is not None and parts:
            join_wavs(parts, say_to)
    return ListenResult(transcript, " ".join(sentences), None, recognize_ms,
                        ms(first_token[0] if first_token else None),
                        ms(first_audio[0] if first_audio else None),
                        ms(first_sentence[0] if first_sentence else None))

"""``appliance listen``: the whole voice pipeline on one WAV file.

Speech is recognized, the first utterance addressed to us is answered by the
model (or by an intent, without it), and the answer is synthesized piece by
piece while it is still being generated.

Latencies count from the end of speech. With ``realtime`` the file is fed at
the pace of a microphone and the end of speech is where its last word ended,
so the recognizer's wait for trailing silence is part of them, as it is for a
person talking to the device. Without it the file is recognized as fast as
possible and they count from the recognizer's result: our processing only.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.llm import ChatRequest, Chunk, Engine
from appliance.voice.activation import Activation, route
from appliance.voice.audio import paced, wav_chunks
from appliance.voice.kid_safe import KID_MAX_TOKENS, KID_SYSTEM_PROMPT
from appliance.voice.pieces import SpokenAnswer
from appliance.voice.recognizer import Recognizer, load_model, transcribe
from appliance.voice.tts import Audio, Synthesizer, load_synthesizer, write_wav


@dataclass(frozen=True)
class ListenResult:
    """What was heard and answered, with the latencies from the end of speech."""

    transcript: str
    answer: str
    intent: str | None
    ms_recognize: float
    ms_first_token: float | None
    ms_first_audio: float | None
    ms_first_piece: float | None = None


class Listener:
    """The speech model, the voice and the engine, loaded once for many files.

    ``engine`` may be ``None`` when only intents can answer.
    """

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        voice = settings.voice
        self.settings, self.engine = settings, engine
        self.model = load_model(voice.model_path)
        self.synthesizer: Synthesizer | None = (
            load_synthesizer(settings) if voice.tts != "none" else None)

    def listen(self, wav: Path, say_to: Path | None = None, *, realtime: bool = False,
               early_words: int | None = None) -> ListenResult:
        """Recognize ``wav``, answer its first request, synthesize the answer (to ``say_to``).

        ``early_words`` overrides ``voice.early_words``.
        """
        voice = self.settings.voice
        gate = Activation(voice.activation, voice.wake_phrase, voice.wake_window_s)
        if voice.activation == "button":
            gate.press()  # a file given to `listen` is what the button recorded
        chunks = paced(wav_chunks(wav)) if realtime else wav_chunks(wav)
        started = time.perf_counter()
        finals: list[str] = []
        intent = request = None
        speech_end = started
        for heard in transcribe(Recognizer.for_voice(self.model, voice), chunks):
            if not heard.final:
                continue
            finals.append(heard.text)
            speech_end = time.perf_counter()
            if realtime and heard.speech_end_s is not None:
                speech_end = min(speech_end, started + heard.speech_end_s)
            intent, request = route(gate, heard.text, voice.intents)
            if intent is not None or request is not None:
                break
        transcript = " ".join(finals)
        recognize_ms = round((time.perf_counter() - started) * 1000, 1)
        if request is None or self.engine is None:
            return ListenResult(transcript, "", intent, recognize_ms, None, None)
        answer, token_ms, audio_ms, piece_ms = self._answer(request, speech_end, say_to,
                                                            early_words)
        return ListenResult(transcript, answer, None, recognize_ms, token_ms, audio_ms, piece_ms)

    def _answer(self, request: str, speech_end: float, say_to: Path | None,
                early_words: int | None) -> tuple[str, float | None, float | None, float | None]:
        """``(answer, ms to first token, ms to first audio, ms to first piece)``."""
        assert self.engine is not None
        settings = self.settings
        kid = settings.voice.kid_safe
        spoken = SpokenAnswer(settings.voice, early_words)
        synthesizer = self.synthesizer
        speaking: list[Future[Audio]] = []
        first_token: list[float] = []
        first_piece: list[float] = []
        first_audio: list[float] = []

        def ms(times: list[float]) -> float | None:
            return round((times[0] - speech_end) * 1000, 1) if times else None

        with ThreadPoolExecutor(1) as tts:

            def speak(piece: str) -> None:
                if not first_piece:
                    first_piece.append(time.perf_counter())
                if synthesizer is None:
                    return

                def run() -> Audio:
                    assert synthesizer is not None
                    audio = synthesizer.synthesize(piece)
                    if not first_audio:
                        first_audio.append(time.perf_counter())
                    return audio

                speaking.append(tts.submit(run))

            def on_chunk(chunk: Chunk) -> None:
                if not first_token:
                    first_token.append(time.perf_counter())
                for piece in spoken.feed(chunk.delta):
                    speak(piece)

            self.engine.complete(ChatRequest(
                request, system_prompt=KID_SYSTEM_PROMPT if kid else None,
                max_tokens=min(KID_MAX_TOKENS, settings.llm.max_tokens) if kid else None),
                on_chunk=on_chunk)
            for piece in spoken.flush():
                speak(piece)
            audio = [f.result() for f in speaking]
        if say_to is not None:
            write_wav(audio, say_to)
        return spoken.text, ms(first_token), ms(first_audio), ms(first_piece)

"""``appliance listen``: the whole voice pipeline on one WAV file.

Speech is recognized, the first utterance addressed to us is answered by the
model (or by an intent, without it), and the answer is synthesized piece by
piece while it is still being generated.

Recognition runs on a thread of its own; the calling thread owns the engine
(llama.cpp's threads belong to the thread that first computes). While the
question is being spoken, each partial transcript addressed to us is handed
to the engine to read ahead (``voice.prefill``), between recognition results:
recognition never waits for it, and a prefill stops as soon as a newer result
arrives. After the end of speech only what the partials had not covered is
evaluated (``evaluated_tokens``).

Latencies count from the end of speech. With ``realtime`` the file is fed at
the pace of a microphone and the end of speech is where its last word ended,
so the recognizer's wait for trailing silence is part of them, as it is for a
person talking to the device. Without it the file is recognized as fast as
possible and they count from the recognizer's result: our processing only.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.llm import ChatRequest, Chunk, Completion, Engine, new_request_id
from appliance.protocol.messages import Request
from appliance.service.preparation import Preparation
from appliance.voice.activation import Activation, prefill_text, route
from appliance.voice.audio import paced, wav_chunks
from appliance.voice.hearing import Hearing, Opening, Woke, uses_wake_word
from appliance.voice.pieces import SpokenAnswer
from appliance.voice.recognizer import Heard, load_model
from appliance.voice.tts import Audio, Synthesizer, load_synthesizer, write_wav


@dataclass(frozen=True)
class ListenResult:
    """What was heard and answered, with the latencies from the end of speech.

    ``prompt_tokens`` is the answer's whole prompt and ``evaluated_tokens``
    what of it the model read after the end of speech. ``partials`` counts the
    partial transcripts handed to the model to read ahead, ``revisions`` those
    of them that changed an earlier word (vosk revises as it hears more; the
    last word of a partial may still be under way and does not count),
    and ``prefilled_tokens`` what reading ahead evaluated in all.
    """

    transcript: str
    answer: str
    intent: str | None
    ms_recognize: float
    ms_first_token: float | None
    ms_first_audio: float | None
    ms_first_piece: float | None = None
    prompt_tokens: int | None = None
    evaluated_tokens: int | None = None
    partials: int = 0
    revisions: int = 0
    prefilled_tokens: int = 0


@dataclass
class _ReadAhead:
    """What prefill did during one utterance."""

    partials: int = 0
    revisions: int = 0
    tokens: int = 0
    last: tuple[str, ...] = ()

    def read(self, engine: Engine, chat: ChatRequest, pending: Callable[[], bool]) -> None:
        """Let ``engine`` read ``chat`` so far, until ``pending()`` says a newer result waits."""
        words = tuple(chat.text.split())
        self.partials += 1
        settled = self.last[:-1]  # the last word may still have been under way
        if words[: len(settled)] != settled:
            self.revisions += 1
        self.last = words
        self.tokens += engine.prefill(chat, pending=pending)[1]


class Listener:
    """The speech model, the voice and the engine, loaded once for many files.

    ``engine`` may be ``None`` when only intents can answer.
    """

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        voice = settings.voice
        self.settings, self.engine = settings, engine
        self.preparation = Preparation(settings.llm, kid_safe=voice.kid_safe)
        self.model = load_model(voice.model_path)
        self.synthesizer: Synthesizer | None = (
            load_synthesizer(settings) if voice.tts != "none" else None)

    def listen(self, wav: Path, say_to: Path | None = None, *, realtime: bool = False,
               early_words: int | None = None, prefill: bool | None = None) -> ListenResult:
        """Recognize ``wav``, answer its first request, synthesize the answer (to ``say_to``).

        ``early_words`` overrides ``voice.early_words`` and ``prefill``
        ``voice.prefill``.
        """
        voice = self.settings.voice
        prefill = voice.prefill if prefill is None else prefill
        gate = Activation(voice.activation, "" if uses_wake_word(voice) else voice.wake_phrase,
                          voice.wake_window_s)
        opening = Opening()
        if voice.activation == "button":
            gate.press()  # a file given to `listen` is what the button recorded
            opening.hold("button", True)
        events: queue.Queue[Heard | Woke | None] = queue.Queue()
        stop = threading.Event()
        failed: list[ApplianceError] = []
        hearing = Hearing.for_voice(self.model, voice, opening)
        started = time.perf_counter()
        thread = threading.Thread(target=self._recognize, name="recognize", daemon=True,
                                  args=(hearing, wav, realtime, stop, events, failed))
        thread.start()
        finals: list[str] = []
        intent = request = None
        speech_end = started
        ahead = _ReadAhead()
        try:
            while (event := events.get()) is not None:
                if isinstance(event, Woke):
                    gate.open_window()
                elif not event.final:
                    text = prefill_text(gate, event.text, voice.intents) if prefill else None
                    if text is not None and self.engine is not None and events.empty():
                        ahead.read(self.engine, self._chat(text), lambda: not events.empty())
                else:
                    finals.append(event.text)
                    speech_end = time.perf_counter()
                    if realtime and event.speech_end_s is not None:
                        speech_end = min(speech_end, started + event.speech_end_s)
                    intent, request = route(gate, event.text, voice.intents)
                    if intent is not None or request is not None:
                        break
        finally:
            stop.set()
        recognize_ms = round((time.perf_counter() - started) * 1000, 1)
        thread.join()
        if failed and request is None and intent is None:
            raise failed[0]
        transcript = " ".join(finals)
        if request is None or self.engine is None:
            return ListenResult(transcript, "", intent, recognize_ms, None, None)
        answer = self._answer(request, speech_end, say_to, early_words)
        return ListenResult(transcript, answer.text, None, recognize_ms, answer.token_ms,
                            answer.audio_ms, answer.piece_ms, answer.completion.prompt_tokens,
                            answer.completion.evaluated_tokens, ahead.partials, ahead.revisions,
                            ahead.tokens)

    @staticmethod
    def _recognize(hearing: Hearing, wav: Path, realtime: bool, stop: threading.Event,
                   events: queue.Queue[Heard | Woke | None],
                   failed: list[ApplianceError]) -> None:
        """The recognition thread: every result into ``events``, then ``None``."""
        try:
            chunks = paced(wav_chunks(wav), stop) if realtime else wav_chunks(wav)
            for chunk in chunks:
                if stop.is_set():
                    return
                for event in hearing.feed(chunk):
                    events.put(event)
            for heard in hearing.finish():
                events.put(heard)
        except ApplianceError as exc:
            failed.append(exc)
        finally:
            events.put(None)

    def _chat(self, text: str) -> ChatRequest:
        """The model's request for ``text`` (as the service prepares it); prefill reads it ahead."""
        return self.preparation.chat(Request(id=new_request_id(), source="voice", text=text))

    def _answer(self, request: str, speech_end: float, say_to: Path | None,
                early_words: int | None) -> _Answer:
        assert self.engine is not None
        spoken = SpokenAnswer(self.settings.voice, early_words)
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

            completion = self.engine.complete(self._chat(request), on_chunk=on_chunk)
            for piece in spoken.flush():
                speak(piece)
            audio = [f.result() for f in speaking]
        if say_to is not None:
            write_wav(audio, say_to)
        return _Answer(spoken.text, completion, ms(first_token), ms(first_audio), ms(first_piece))


@dataclass(frozen=True)
class _Answer:
    """The answer's text and completion, and its latencies from the end of speech (ms)."""

    text: str
    completion: Completion
    token_ms: float | None
    audio_ms: float | None
    piece_ms: float | None

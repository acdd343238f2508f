"""``appliance bench voice``: recognition speed, the cost of waiting, and spoken-answer latency.

* Real-time factor: processing time over audio duration, for our recognizer and
  for a bare vosk ``KaldiRecognizer`` loop on the same audio (target < 0.3).
* Waiting for the wake word: CPU seconds per second of audio, listening to a
  quiet room and to speech without the wake word, with vosk (the configured
  recognizer, which ``voice.wake.engine: vosk`` runs on every sound) against
  microWakeWord (``micro``: vosk then hears nothing) (target: micro <= 20 %).
* From the end of speech: to the first answer token, to the first speakable
  piece of text and to the first synthesized audio, p50 over the phrases. Each
  is measured with whole sentences only and with the first words spoken early
  (``voice.early_words``), and both live (the audio paced like a microphone,
  from the end of the last word) and from the recognizer's result on a file
  read at full speed (our processing alone). Target: first audio <= 1.5 x
  first token + the TTS time of one sentence.
* Prefill, live, on an utterance of at least 8 words: the prompt tokens read
  after the end of speech with the partial transcripts read ahead against
  without (target <= 4), first token and first audio both ways (target: first
  audio <= 1 s with ``end_silence_s`` 0.5), how often partials revised earlier
  words and what reading ahead evaluated in all; the saving is projected at
  20 prompt tokens/s (a Pi 5 with the 3B model) from the tokens saved, next
  to this machine's own measured prompt rate.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import vosk

from appliance.bench.spoken import spoken_wav
from appliance.config import Settings
from appliance.llm import ChatRequest, Engine
from appliance.voice.activation import match_intent
from appliance.voice.audio import RATE, read_wav, wav_chunks
from appliance.voice.listen import Listener, ListenResult
from appliance.voice.recognizer import Recognizer, transcribe
from appliance.voice.wake import WakeWord

PI5_PROMPT_RATE = 20.0
"""Prompt tokens/s of the 3B default model on a Pi 5, for the projected saving."""
MIN_UTTERANCE_WORDS = 8
ENGLISH_UTTERANCE = "please tell me what the weather will be like in the city tomorrow"


@dataclass(frozen=True)
class Latency:
    """p50 milliseconds from the end of speech, for one way of cutting the answer."""

    live: bool
    early_words: int
    first_token_ms: float
    first_piece_ms: float
    first_audio_ms: float
    budget_ms: float

    @property
    def met(self) -> bool:
        """Whether the first audio came within the budget."""
        return self.first_audio_ms <= self.budget_ms


@dataclass(frozen=True)
class WakeCost:
    """CPU seconds per second of audio while waiting to be called, vosk against micro."""

    vosk_silence: float
    micro_silence: float
    vosk_speech: float
    micro_speech: float
    audio_s: float

    @property
    def ratios(self) -> tuple[float, float]:
        """The cost of micro as a share of vosk's, in silence and in speech."""
        return self.micro_silence / self.vosk_silence, self.micro_speech / self.vosk_speech

    @property
    def met(self) -> bool:
        """Whether micro costs at most 20 % of vosk, in silence and in speech."""
        return max(self.ratios) <= 0.2


@dataclass(frozen=True)
class Prefill:
    """Live, from the end of speech, p50 with partials read ahead against without."""

    utterance: str
    words: int
    prompt_tokens: int
    end_silence_s: float
    evaluated_with: float
    evaluated_without: float
    first_token_with_ms: float
    first_token_without_ms: float
    first_audio_with_ms: float
    first_audio_without_ms: float
    partials: float
    revisions: float
    prefilled_tokens: float
    prompt_rate: float

    @property
    def saved_tokens(self) -> float:
        """Prompt tokens no longer read after the end of speech."""
        return self.evaluated_without - self.evaluated_with

    @property
    def saved_here_ms(self) -> float:
        """What the saved tokens take at this machine's measured prompt rate."""
        return self.saved_tokens / self.prompt_rate * 1000

    @property
    def saved_pi5_ms(self) -> float:
        """What they take at :data:`PI5_PROMPT_RATE`."""
        return self.saved_tokens / PI5_PROMPT_RATE * 1000

    @property
    def met(self) -> tuple[bool, bool]:
        """At most 4 tokens after the end; first audio within 1 s of it."""
        return self.evaluated_with <= 4, self.first_audio_with_ms <= 1000


@dataclass(frozen=True)
class VoiceBench:
    """The figures of one run."""

    rtf: float
    bare_rtf: float
    tts: str
    tts_sentence_ms: float
    latencies: tuple[Latency, ...]
    wake: WakeCost
    prefill: Prefill


def _quiet_room(out: Path, seconds: float) -> Path:
    """A quiet room: pink noise around -50 dBFS, the same every run."""
    subprocess.run(["sox", "-R", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(out),
                    "synth", str(seconds), "pinknoise", "vol", "0.003"], check=True)
    return out


def _answered(results: list[ListenResult]) -> list[ListenResult]:
    done = [r for r in results if r.ms_first_token is not None
            and r.ms_first_audio is not None and r.ms_first_piece is not None]
    if not done:
        raise RuntimeError("no phrase was answered; check voice.activation, voice.grammar "
                           "and voice.intents")
    return done


def _p50(results: list[ListenResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def _cpu_per_second(feed: Callable[[bytes], object], pcm: bytes) -> float:
    """CPU seconds (all threads) per second of ``pcm``, fed 100 ms at a time at full speed."""
    started = time.process_time()
    for start in range(0, len(pcm), 3200):
        feed(pcm[start:start + 3200])
    return (time.process_time() - started) / (len(pcm) / (RATE * 2))


def measure_wake_cost(settings: Settings, model: vosk.Model, silence: Path,
                      speech: Path) -> WakeCost:
    """What waiting costs with vosk on every sound, and with microWakeWord instead."""
    voice = settings.voice
    costs = {}
    for name, wav in (("silence", silence), ("speech", speech)):
        pcm = read_wav(wav)
        recognizer = Recognizer.for_voice(model, voice)
        costs["vosk", name] = _cpu_per_second(lambda c, r=recognizer: list(r.feed(c)), pcm)
        wake = WakeWord(voice.wake)
        costs["micro", name] = _cpu_per_second(wake.feed, pcm)
        wake.close()
    return WakeCost(costs["vosk", "silence"], costs["micro", "silence"], costs["vosk", "speech"],
                    costs["micro", "speech"], len(read_wav(silence)) / (RATE * 2))


def benchmark_utterance(settings: Settings) -> str:
    """At least 8 words the recognizer can hear: the grammar's phrases (no intents), in turn."""
    voice = settings.voice
    phrases = [p for p in voice.grammar if match_intent(p, voice.intents) is None]
    if not phrases:
        return ENGLISH_UTTERANCE
    words: list[str] = []
    while len(words) < MIN_UTTERANCE_WORDS:
        for phrase in phrases:
            words += phrase.split()
    return " ".join(words)


def _prompt_rate(engine: Engine) -> float:
    """Prompt tokens/s of this model on this machine: a long question read from its start."""
    _forget_question(engine)
    started = time.perf_counter()
    _, evaluated = engine.prefill(ChatRequest("The quick brown fox jumps over the lazy dog. "
                                              * 12), pending=lambda: False)
    return evaluated / (time.perf_counter() - started)


def _forget_question(engine: Engine) -> None:
    """Leave only the system prompt in the engine's cache, as after another conversation."""
    engine.prefill(ChatRequest(""), pending=lambda: False)


def measure_prefill(listener: Listener, engine: Engine, wav: Path, utterance: str,
                    rounds: int) -> Prefill:
    """The same utterance, live, with and without prefill, ``rounds`` times each."""
    runs: dict[bool, list[ListenResult]] = {True: [], False: []}
    for _ in range(rounds):
        for prefill in (True, False):
            _forget_question(engine)
            runs[prefill].append(listener.listen(wav, realtime=True, prefill=prefill))
    ahead, cold = _answered(runs[True]), _answered(runs[False])
    return Prefill(
        utterance, len(utterance.split()), int(_p50(cold, "prompt_tokens")),
        listener.settings.voice.end_silence_s,
        _p50(ahead, "evaluated_tokens"), _p50(cold, "evaluated_tokens"),
        _p50(ahead, "ms_first_token"), _p50(cold, "ms_first_token"),
        _p50(ahead, "ms_first_audio"), _p50(cold, "ms_first_audio"),
        _p50(ahead, "partials"), _p50(ahead, "revisions"), _p50(ahead, "prefilled_tokens"),
        _prompt_rate(engine))


def run_voice_bench(settings: Settings, engine: Engine, speech_voice: str,
                    rounds: int = 3, utterance: str | None = None) -> VoiceBench:
    """Speak the grammar's phrases (or a question) with espeak-ng ``speech_voice`` and measure."""
    voice = settings.voice
    phrases = list(voice.grammar) or ["what is the weather today"]
    utterance = utterance or benchmark_utterance(settings)
    listener = Listener(settings, engine)
    model, synthesizer = listener.model, listener.synthesizer
    assert synthesizer is not None, "bench voice needs voice.tts"
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        wavs = [spoken_wav(p, speech_voice, Path(tmp) / f"{i}.wav", 2.0)
                for i, p in enumerate(phrases)]
        talk = Path(tmp) / "talk.wav"
        subprocess.run(["sox", *map(str, wavs * 4), str(talk)], check=True)
        wake = measure_wake_cost(settings, model, _quiet_room(Path(tmp) / "quiet.wav", 20),
                                 talk)
        audio_s = sum(len(read_wav(w)) for w in wavs) / (RATE * 2) * rounds
        started = time.perf_counter()
        for _ in range(rounds):
            for wav in wavs:
                list(transcribe(Recognizer.for_voice(model, voice), wav_chunks(wav)))
        ours = (time.perf_counter() - started) / audio_s
        grammar = json.dumps([*voice.grammar, "[unk]"], ensure_ascii=False)
        started = time.perf_counter()
        for _ in range(rounds):
            for wav in wavs:
                kaldi = (vosk.KaldiRecognizer(model, RATE, grammar) if voice.grammar
                         else vosk.KaldiRecognizer(model, RATE))
                for chunk in wav_chunks(wav):
                    kaldi.AcceptWaveform(chunk)
                kaldi.FinalResult()
        bare = (time.perf_counter() - started) / audio_s
        listener.listen(wavs[0])  # warm-up: the system prompt's cache, the voice
        runs = {(live, early): _answered([listener.listen(wav, realtime=live, early_words=early)
                                          for wav in wavs])
                for live in (True, False) for early in sorted({0, voice.early_words})}
        prefill = measure_prefill(listener, engine, spoken_wav(utterance, speech_voice,
                                                               Path(tmp) / "long.wav", 2.0),
                                  utterance, rounds)
        tts = []
        for result in runs[True, 0]:  # the TTS time of a real first sentence
            started = time.perf_counter()
            synthesizer.synthesize(result.answer.split(". ")[0])
            tts.append((time.perf_counter() - started) * 1000)
    tts_ms = statistics.median(tts)
    latencies = []
    for (live, early), results in runs.items():
        token = _p50(results, "ms_first_token")
        latencies.append(Latency(live, early, token, _p50(results, "ms_first_piece"),
                                 _p50(results, "ms_first_audio"), 1.5 * token + tts_ms))
    return VoiceBench(ours, bare, voice.tts, tts_ms, tuple(latencies), wake, prefill)

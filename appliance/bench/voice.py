"""``appliance bench voice``: recognition speed and the latency of a spoken answer.

* Real-time factor: processing time over audio duration, for our recognizer and
  for a bare vosk ``KaldiRecognizer`` loop on the same audio (target < 0.3).
* From the end of speech: to the first answer token, to the first speakable
  piece of text and to the first synthesized audio, p50 over the phrases. Each
  is measured with whole sentences only and with the first words spoken early
  (``voice.early_words``), and both live (the audio paced like a microphone,
  from the end of the last word) and from the recognizer's result on a file
  read at full speed (our processing alone). Target: first audio <= 1.5 x
  first token + the TTS time of one sentence.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import vosk

from appliance.config import Settings
from appliance.llm import Engine
from appliance.voice.audio import RATE, read_wav, wav_chunks
from appliance.voice.listen import Listener, ListenResult
from appliance.voice.recognizer import Recognizer, transcribe


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
class VoiceBench:
    """The figures of one run."""

    rtf: float
    bare_rtf: float
    tts: str
    tts_sentence_ms: float
    latencies: tuple[Latency, ...]


def _speak(text: str, voice: str, out: Path) -> Path:
    """``text`` spoken, then silence as a microphone would go on hearing it."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), "--", text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out),
                    "pad", "0", "2"], check=True)
    return out


def _answered(results: list[ListenResult]) -> list[ListenResult]:
    done = [r for r in results if r.ms_first_token is not None
            and r.ms_first_audio is not None and r.ms_first_piece is not None]
    if not done:
        raise RuntimeError("no phrase was answered; check voice.grammar and intents")
    return done


def _p50(results: list[ListenResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in results)


def run_voice_bench(settings: Settings, engine: Engine, speech_voice: str,
                    rounds: int = 3) -> VoiceBench:
    """Speak the grammar's phrases (or a question) with espeak-ng ``speech_voice`` and measure."""
    voice = settings.voice
    phrases = list(voice.grammar) or ["what is the weather today"]
    listener = Listener(settings, engine)
    model, synthesizer = listener.model, listener.synthesizer
    assert synthesizer is not None, "bench voice needs voice.tts"
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        wavs = [_speak(p, speech_voice, Path(tmp) / f"{i}.wav") for i, p in enumerate(phrases)]
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
    return VoiceBench(ours, bare, voice.tts, tts_ms, tuple(latencies))

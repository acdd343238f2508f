"""``appliance bench voice``: recognition speed and the latency of a spoken answer.

* Real-time factor: processing time over audio duration, for our recognizer and
  for a bare vosk ``KaldiRecognizer`` loop on the same audio (target < 0.3).
* From the end of speech: to the first answer token and to the first synthesized
  audio, p50 over the phrases (target: first audio <= 1.5 x first token + the TTS
  time of one sentence).
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
from appliance.voice.listen import listen
from appliance.voice.recognizer import load_model, transcribe
from appliance.voice.speech_out import synthesize


@dataclass(frozen=True)
class VoiceBench:
    """The figures of one run."""

    rtf: float
    bare_rtf: float
    first_token_p50_ms: float
    first_sentence_p50_ms: float
    first_audio_p50_ms: float
    tts_sentence_ms: float

    @property
    def audio_budget_ms(self) -> float:
        """The target for the first audio."""
        return 1.5 * self.first_token_p50_ms + self.tts_sentence_ms


def _speak(text: str, voice: str, out: Path) -> Path:
    raw = out.with_suffix(".raw.wav")
    synthesize(text, voice, raw)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)],
                   check=True)
    return out


def run_voice_bench(settings: Settings, engine: Engine, rounds: int = 3) -> VoiceBench:
    """Speak the grammar's phrases (or a question) with espeak-ng and measure."""
    voice = settings.voice
    phrases = list(voice.grammar) or ["what is the weather today"]
    model = load_model(voice.model_path)
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        wavs = [_speak(p, voice.tts_voice, Path(tmp) / f"{i}.wav")
                for i, p in enumerate(phrases)]
        audio_s = sum(len(read_wav(w)) for w in wavs) / (RATE * 2) * rounds
        started = time.perf_counter()
        for _ in range(rounds):
            for wav in wavs:
                list(transcribe(model, wav_chunks(wav), voice.grammar))
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
        first_token, first_sentence, first_audio, tts = [], [], [], []
        for wav in wavs:
            result = listen(settings, wav, engine)
            if (result.ms_first_token is None or result.ms_first_audio is None
                    or result.ms_first_sentence is None):
                continue
            first_token.append(result.ms_first_token)
            first_sentence.append(result.ms_first_sentence)
            first_audio.append(result.ms_first_audio)
            sentence = result.answer.split(". ")[0]  # time the TTS of a real first sentence
            started = time.perf_counter()
            synthesize(sentence, voice.tts_voice, Path(tmp) / "tts.wav")
            tts.append((time.perf_counter() - started) * 1000)
        if not first_token:
            raise RuntimeError("no phrase was answered; check voice.grammar and intents")
    return VoiceBench(ours, bare, statistics.median(first_token),
                      statistics.median(first_sentence), statistics.median(first_audio),
                      statistics.median(tts))

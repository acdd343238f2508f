"""``appliance bench voice``: recognition real-time factor and spoken-answer latency."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.errors import UsageError


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench voice``."""
    voice = cmds.add_parser("voice", help="recognition real-time factor, spoken-answer latency")
    voice.add_argument("--rounds", type=int, default=3, help="recognition rounds")
    voice.add_argument("--speech-voice", metavar="VOICE",
                       help="espeak-ng voice that speaks the test phrases, in the speech "
                            "model's language (default: voice.tts_voice for espeak-ng, else en)")
    voice.add_argument("--json", action="store_true", help="print the figures as JSON")
    voice.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Measure speech in and out."""
    from appliance.bench.voice import run_voice_bench
    from appliance.cli import load
    from appliance.llm import Engine
    from appliance.voice.tts import check_tts, voice_name

    settings = load(args)
    voice = settings.voice
    if voice.tts == "none":
        raise UsageError("bench voice: set voice.tts to espeak-ng or piper to time speech")
    check_tts(settings)
    speech_voice = args.speech_voice or (
        voice_name(voice) if voice.tts == "espeak-ng" else "en")
    engine = Engine(settings.llm, resolve_llm(settings))
    r = run_voice_bench(settings, engine, speech_voice, rounds=args.rounds)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "met": [lat.met for lat in r.latencies]}))
        return 0
    print(f"recognition  real-time factor {r.rtf:.3f}   bare vosk {r.bare_rtf:.3f}   ratio "
          f"{r.rtf / r.bare_rtf:5.2f}x  (target < 0.3)")
    print(f"speech out   {r.tts}: one sentence takes {r.tts_sentence_ms:.0f} ms to synthesize")
    print("live: the audio paced like a microphone, timed from the end of its last word; "
          "file: read at full speed, timed from the recognizer's result (our processing)")
    for lat in r.latencies:
        how = (f"{'live' if lat.live else 'file'}, "
               f"{f'first {lat.early_words} words early' if lat.early_words else 'sentences'}")
        print(f"{how:<28} from end of speech, p50: first token {lat.first_token_ms:6.1f} ms   "
              f"first piece {lat.first_piece_ms:6.1f} ms   first audio "
              f"{lat.first_audio_ms:6.1f} ms")
        print(f"{'':<28} budget 1.5 x first token + one sentence of TTS = "
              f"{lat.budget_ms:6.1f} ms   first audio / budget "
              f"{lat.first_audio_ms / lat.budget_ms:5.2f}  ({'met' if lat.met else 'NOT met'})")
    return 0

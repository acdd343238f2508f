"""``appliance bench voice``: recognition, the cost of waiting for the wake word, answer latency."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int
from appliance.errors import UsageError


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench voice``."""
    voice = cmds.add_parser("voice", help="recognition real-time factor, wake word cost, "
                                          "spoken-answer latency, prefill")
    voice.add_argument("--rounds", type=positive_int, default=3,
                       help="recognition and prefill rounds")
    voice.add_argument("--speech-voice", metavar="VOICE",
                       help="espeak-ng voice that speaks the test phrases, in the speech "
                            "model's language (default: voice.tts_voice for espeak-ng, else en)")
    voice.add_argument("--utterance", metavar="TEXT",
                       help="the question of at least 8 words for the prefill figures "
                            "(default: the grammar's phrases in turn, else an English one)")
    voice.add_argument("--json", action="store_true", help="print the figures as JSON")
    voice.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Measure speech in and out."""
    from appliance.bench.voice import MIN_UTTERANCE_WORDS, PI5_PROMPT_RATE, run_voice_bench
    from appliance.cli import load
    from appliance.llm import Engine
    from appliance.voice.tts import check_tts, voice_name
    from appliance.voice.wake import check_wake

    settings = load(args)
    voice = settings.voice
    if voice.tts == "none":
        raise UsageError("bench voice: set voice.tts to espeak-ng or piper to time speech")
    if args.utterance is not None and len(args.utterance.split()) < MIN_UTTERANCE_WORDS:
        raise UsageError(f"bench voice: --utterance needs at least {MIN_UTTERANCE_WORDS} words")
    check_tts(settings)
    check_wake(settings)
    speech_voice = args.speech_voice or (
        voice_name(voice) if voice.tts == "espeak-ng" else "en")
    engine = Engine(settings.llm, resolve_llm(settings))
    r = run_voice_bench(settings, engine, speech_voice, rounds=args.rounds,
                        utterance=args.utterance)
    w, p = r.wake, r.prefill
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "met": [lat.met for lat in r.latencies],
                          "wake_ratios": w.ratios, "wake_met": w.met,
                          "prefill_saved_tokens": p.saved_tokens,
                          "prefill_saved_here_ms": p.saved_here_ms,
                          "prefill_saved_pi5_ms": p.saved_pi5_ms, "prefill_met": p.met},
                         ensure_ascii=False))
        return 0
    print(f"recognition  real-time factor {r.rtf:.3f}   bare vosk {r.bare_rtf:.3f}   ratio "
          f"{r.rtf / r.bare_rtf:5.2f}x  (target < 0.3)")
    silence, speech = w.ratios
    print(f"waiting      CPU s per s of audio, {w.audio_s:.0f} s each: quiet room  vosk "
          f"{w.vosk_silence:.4f}  micro {w.micro_silence:.4f} ({silence:.1%});  speech without "
          f"the wake word  vosk {w.vosk_speech:.4f}  micro {w.micro_speech:.4f} ({speech:.1%})"
          f"  (target micro <= 20%: {'met' if w.met else 'NOT met'})")
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
    few, soon = p.met
    print(f"prefill      live, {p.words} words ({p.prompt_tokens} prompt tokens), end_silence_s "
          f"{p.end_silence_s}, p50 of {args.rounds}: \"{p.utterance}\"")
    print(f"{'':<13}tokens read after the end of speech: with prefill {p.evaluated_with:.0f}   "
          f"without {p.evaluated_without:.0f}  (target <= 4: {'met' if few else 'NOT met'})")
    print(f"{'':<13}first token: with {p.first_token_with_ms:6.1f} ms   without "
          f"{p.first_token_without_ms:6.1f} ms;   first audio: with {p.first_audio_with_ms:6.1f}"
          f" ms   without {p.first_audio_without_ms:6.1f} ms  (target <= 1000 ms: "
          f"{'met' if soon else 'NOT met'})")
    print(f"{'':<13}{p.saved_tokens:.0f} tokens saved: {p.saved_here_ms:.0f} ms at this "
          f"machine's {p.prompt_rate:.0f} prompt tokens/s, {p.saved_pi5_ms:.0f} ms at "
          f"{PI5_PROMPT_RATE:.0f} tokens/s (a Pi 5 with the 3B model)")
    print(f"{'':<13}read ahead: {p.partials:.0f} partials, {p.revisions:.0f} of them revised an "
          f"earlier word; {p.prefilled_tokens:.0f} tokens evaluated while speaking")
    return 0

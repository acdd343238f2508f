"""``appliance bench api``: time to first token and tokens/s through each API; Wyoming's RTF."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int

TTFT_TARGET_MS = 10.0
RATE_TARGET = 0.95
RTF_TARGET = 1.1


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench api``."""
    api = cmds.add_parser("api", help="what the HTTP and Wyoming APIs add to answers and "
                                      "transcription")
    api.add_argument("--rounds", type=positive_int, default=4, help="rounds over the question set")
    api.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    api.add_argument("--speech-voice", metavar="VOICE",
                     help="espeak-ng voice that speaks the test phrases, in the speech model's "
                          "language (default: voice.tts_voice for espeak-ng, else en)")
    api.add_argument("--json", action="store_true", help="print the figures as JSON")
    api.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start a private ``appliance run`` with both APIs and measure them."""
    from appliance.bench.api import run_api_bench
    from appliance.cli import load

    settings = load(args)
    voice = settings.voice
    speech_voice = args.speech_voice or (
        voice.tts_voice if voice.tts == "espeak-ng" and voice.tts_voice else "en")
    r = run_api_bench(settings, resolve_llm(settings), rounds=args.rounds,
                      max_tokens=args.max_tokens, speech_voice=speech_voice)
    if args.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    base = r.engine
    print(f"generation  {r.rounds} rounds of 5 questions, {r.max_tokens} tokens each, "
          "interleaved; p50")
    print(f"{base.name:<18} first token {base.ttft_ms:7.1f} ms   {base.tokens_per_s:7.1f} "
          "tokens/s")
    for path in r.paths[1:]:
        share = path.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0
        print(f"{path.name:<18} first token {path.ttft_ms:7.1f} ms   {path.tokens_per_s:7.1f} "
              f"tokens/s   against the engine: {path.ttft_ms - base.ttft_ms:+6.1f} ms, "
              f"{share:6.1%} of the rate")
    print("added by each API, per request (its client's time less its generation's own), p50:")
    for path in r.paths[1:]:
        met = path.added_ms <= TTFT_TARGET_MS and path.rate_share >= RATE_TARGET
        print(f"{path.name:<18} first token {path.added_ms:+6.1f} ms   tokens/s "
              f"{path.rate_share:6.1%} of the generation's  (target <= {TTFT_TARGET_MS:.0f} "
              f"ms, >= {RATE_TARGET:.0%}: {'met' if met else 'NOT met'})")
    if r.wyoming_rtf is None or r.vosk_rtf is None:
        print("speech      skipped: voice.model_path is not set")
        return 0
    ratio = r.wyoming_rtf / r.vosk_rtf
    print(f"speech      {r.audio_s:.1f} s of audio; real-time factor through Wyoming "
          f"{r.wyoming_rtf:.3f}, bare vosk {r.vosk_rtf:.3f}, ratio {ratio:4.2f}x  "
          f"(target <= {RTF_TARGET}x: {'met' if ratio <= RTF_TARGET else 'NOT met'})")
    return 0

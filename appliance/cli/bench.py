"""``appliance bench llm``: performance figures as ratios against raw baselines."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.bench.llm import run_llm_bench
from appliance.catalog import resolve_llm
from appliance.errors import UsageError
from appliance.llm import Engine
from appliance.voice.tts import check_tts, voice_name


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench`` command group."""
    p = sub.add_parser("bench", help="measure performance against raw baselines")
    cmds = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    llm = cmds.add_parser("llm", help="engine tokens/s and prefix-cache time to first token")
    llm.add_argument("--rounds", type=int, default=3, help="rounds over the question set")
    llm.add_argument("--max-tokens", type=int, default=96, help="tokens per answer")
    llm.add_argument("--json", action="store_true", help="print the figures as JSON")
    llm.set_defaults(handler=run_llm)
    bridge = cmds.add_parser("bridge", help="MQTT ingest rate and latency added to an ask")
    bridge.add_argument("--events", type=int, default=20000, help="sensor events to send")
    bridge.add_argument("--rounds", type=int, default=4, help="rounds over the question set")
    bridge.add_argument("--json", action="store_true", help="print the figures as JSON")
    bridge.set_defaults(handler=run_bridge)
    thermal = cmds.add_parser("thermal", help="watchdog CPU cost and heat-to-cut delay")
    thermal.add_argument("--rounds", type=int, default=5, help="heat steps to time")
    thermal.add_argument("--json", action="store_true", help="print the figures as JSON")
    thermal.set_defaults(handler=run_thermal)
    voice = cmds.add_parser("voice", help="recognition real-time factor, spoken-answer latency")
    voice.add_argument("--rounds", type=int, default=3, help="recognition rounds")
    voice.add_argument("--speech-voice", metavar="VOICE",
                       help="espeak-ng voice that speaks the test phrases, in the speech "
                            "model's language (default: voice.tts_voice for espeak-ng, else en)")
    voice.add_argument("--json", action="store_true", help="print the figures as JSON")
    voice.set_defaults(handler=run_voice)


def run_llm(args: argparse.Namespace) -> int:
    """Load the configured model once and compare."""
    from appliance.cli import load

    settings = load(args)
    llm = dataclasses.replace(settings.llm, temperature=0.0)
    engine = Engine(llm, resolve_llm(settings))
    result = run_llm_bench(engine, rounds=args.rounds, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "speed_ratio": result.speed_ratio,
                          "ttft_ratio": result.ttft_ratio, "model": engine.model_name}))
        return 0
    print(f"model {engine.model_name}, {llm.n_threads or 'auto'} threads, "
          f"{args.rounds} rounds")
    print(f"generation  ours {result.ours_tps:7.1f} tok/s   bare llama-cpp-python "
          f"{result.bare_tps:7.1f} tok/s   ratio {result.speed_ratio:6.1%}  (target >= 97%)")
    print(f"first token after a {result.system_tokens}-token system prompt: cached "
          f"{result.cached_ttft_ms:7.1f} ms   uncached {result.uncached_ttft_ms:7.1f} ms   "
          f"ratio {result.ttft_ratio:6.1%}  (target <= 30%)")
    return 0


def run_bridge(args: argparse.Namespace) -> int:
    """Start a private mosquitto and measure the bridge."""
    from appliance.bench.bridge import run_bridge_bench
    from appliance.cli import load

    settings = load(args)
    r = run_bridge_bench(settings, resolve_llm(settings), events=args.events,
                         rounds=args.rounds)
    if args.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"ingest   ours {r.ours_events_per_s:8.0f} events/s   bare paho "
          f"{r.bare_events_per_s:8.0f} events/s   ratio "
          f"{r.ours_events_per_s / r.bare_events_per_s:6.1%}   {r.events} sent, "
          f"{r.ingest_errors} errors  (target >= 5000/s, no loss)")
    print(f"ask      engine alone p50 {r.engine_p50_ms:6.1f} ms   via MQTT p50 "
          f"{r.mqtt_p50_ms:6.1f} ms (interleaved)")
    print(f"added    round trip less generation: p50 {r.added_p50_ms:6.1f} ms   "
          f"p95 {r.added_p95_ms:6.1f} ms  (target p50 <= 15 ms)")
    return 0


def run_thermal(args: argparse.Namespace) -> int:
    """Measure the thermal watchdog."""
    from appliance.bench.thermal import run_thermal_bench
    from appliance.cli import load

    settings = load(args)
    r = run_thermal_bench(settings, resolve_llm(settings), rounds=args.rounds)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "core_share": r.core_share}))
        return 0
    print(f"cost      {r.tick_cpu_us:7.1f} us CPU per tick   bare read {r.bare_read_cpu_us:7.1f} us"
          f"   ratio {r.tick_cpu_us / r.bare_read_cpu_us:5.1f}x   at {r.interval_s:g} s: "
          f"{r.core_share:.4%} of a core  (target < 0.1 %)")
    print(f"reaction  heat step to throttled answer: p50 {r.reaction_p50_s:.2f} s   max "
          f"{r.reaction_max_s:.2f} s   = {r.reaction_max_s / r.interval_s:.2f} x the interval"
          "  (target < 1.5 x)")
    return 0


def run_voice(args: argparse.Namespace) -> int:
    """Measure speech in and out."""
    from appliance.bench.voice import run_voice_bench
    from appliance.cli import load

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

"""``appliance bench bridge``: MQTT ingest rate and the latency the bridge adds to an ask."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench bridge``."""
    bridge = cmds.add_parser("bridge", help="MQTT ingest rate and latency added to an ask")
    bridge.add_argument("--events", type=int, default=20000, help="sensor events to send")
    bridge.add_argument("--rounds", type=positive_int, default=4,
                        help="rounds over the question set")
    bridge.add_argument("--fuzz", type=int, default=10000, help="hostile payloads to send")
    bridge.add_argument("--json", action="store_true", help="print the figures as JSON")
    bridge.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start a private mosquitto and measure the bridge."""
    from appliance.bench.bridge import run_bridge_bench
    from appliance.cli import load

    settings = load(args)
    r = run_bridge_bench(settings, resolve_llm(settings), events=args.events,
                         rounds=args.rounds, fuzz=args.fuzz)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "ingest_ratio": r.ingest_ratio}))
        return 0
    f = r.fuzz
    print(f"ingest   ours {r.ours_events_per_s:8.0f} events/s   bare paho "
          f"{r.bare_events_per_s:8.0f} events/s   ratio {r.ingest_ratio:6.1%}   "
          f"{r.events} sent, {r.ingest_errors} errors  (median of 3; target >= 85%, no loss)")
    print(f"ask      engine alone p50 {r.engine_p50_ms:6.1f} ms   via MQTT p50 "
          f"{r.mqtt_p50_ms:6.1f} ms (interleaved)")
    print(f"added    round trip less generation: p50 {r.added_p50_ms:6.1f} ms   "
          f"p95 {r.added_p95_ms:6.1f} ms  (target p50 <= 5 ms)")
    print(f"fsync    synchronous=FULL before each acknowledgement: {r.fsync_ms:5.2f} ms per "
          f"question = {r.fsync_ms / r.added_p50_ms:5.1%} of what the bridge adds")
    print(f"fuzz     {f.sent} hostile payloads, {f.errors} errors (want {f.sent}), "
          f"{f.valid_answered}/{f.valid_asked} valid asks answered, "
          f"{f.payloads_per_s:6.0f} payloads/s, RSS {r.fuzz_rss_growth_mb:+.1f} MiB "
          f"(target < 20 MiB), then {r.fuzz_again_rss_growth_mb:+.1f} MiB over as many again, "
          f"{len(f.unexpected)} unexpected messages")
    return 0

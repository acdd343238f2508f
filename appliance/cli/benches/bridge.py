"""``appliance bench bridge``: MQTT ingest rate and the latency the bridge adds to an ask."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench bridge``."""
    bridge = cmds.add_parser("bridge", help="MQTT ingest rate and latency added to an ask")
    bridge.add_argument("--events", type=int, default=20000, help="sensor events to send")
    bridge.add_argument("--rounds", type=int, default=4, help="rounds over the question set")
    bridge.add_argument("--json", action="store_true", help="print the figures as JSON")
    bridge.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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

"""``appliance bench escalation``: a remote answer through the appliance against direct, fleets."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench escalation``."""
    p = cmds.add_parser("escalation", help="remote TTFT through the appliance against direct, "
                                           "the confidence check, the fleet's spread")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds over the question set")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start a private server, broker and appliances, and compare."""
    from appliance.bench.escalation import run_escalation_bench
    from appliance.cli import load

    r = run_escalation_bench(resolve_llm(load(args)), rounds=args.rounds)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "added_ttft_ms": r.added_ttft_ms}))
        return 0
    print(f"remote   first token: direct p50 {r.direct_ttft_ms:6.1f} ms   through the appliance "
          f"{r.appliance_ttft_ms:6.1f} ms   added {r.added_ttft_ms:+6.1f} ms  (target <= 15 ms)")
    print(f"         whole answer: direct p50 {r.direct_total_ms:6.1f} ms   through the "
          f"appliance {r.appliance_total_ms:6.1f} ms")
    print(f"confidence check: {r.watched_tps:6.1f} tok/s watched against {r.unwatched_tps:6.1f} "
          f"unwatched = {r.watched_tps / r.unwatched_tps:6.1%}")
    print(f"fleet    one device busy; site asks spread with handing on {r.spread_handing_on}, "
          f"all answered in {r.wait_handing_on_ms:.0f} ms")
    print(f"         plain round robin {r.spread_round_robin}, all answered in "
          f"{r.wait_round_robin_ms:.0f} ms")
    return 0

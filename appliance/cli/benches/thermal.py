"""``appliance bench thermal``: the watchdog's CPU cost and its heat-to-cut delay."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench thermal``."""
    thermal = cmds.add_parser("thermal", help="watchdog CPU cost and heat-to-cut delay")
    thermal.add_argument("--rounds", type=positive_int, default=5, help="heat steps to time")
    thermal.add_argument("--json", action="store_true", help="print the figures as JSON")
    thermal.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
    print("threads   decode speed (and energy) of the same greedy answers:")
    for row in r.threads:
        energy = f"   {row.j_per_token:.3f} J/token" if row.j_per_token is not None else ""
        print(f"          {row.n_threads} thread(s): {row.tokens_per_s:7.1f} tok/s{energy}")
    return 0

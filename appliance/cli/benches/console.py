"""``appliance bench console``: first-load bytes, CPU per open console, decode rate beside it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench console``."""
    p = cmds.add_parser("console", help="what the console costs: first load, CPU per open "
                                        "console, decode tokens/s with consoles open")
    p.add_argument("--consoles", type=int, default=3, help="consoles open at once")
    p.add_argument("--window", type=float, default=30.0,
                   help="seconds of CPU time measured with and without the consoles")
    p.add_argument("--rounds", type=positive_int, default=4,
                   help="rounds of questions, with and without the consoles open")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start a private ``appliance run`` with the console and measure it."""
    from appliance.bench.console import FIRST_LOAD_BUDGET, RATE_TARGET, run_console_bench
    from appliance.cli import load

    settings = load(args)
    r = run_console_bench(settings, resolve_llm(settings), consoles=args.consoles,
                          window_s=args.window, rounds=args.rounds, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "first_load_bytes": r.first_load_bytes,
                          "cpu_per_console_min_s": r.cpu_per_console_min_s,
                          "rate_share": r.rate_share}))
        return 0
    size = r.first_load_bytes
    print(f"first load  {size / 1000:.1f} KB compressed (gzip), "
          f"{size / FIRST_LOAD_BUDGET:.0%} of the {FIRST_LOAD_BUDGET // 1000} KB budget: "
          f"{'met' if size <= FIRST_LOAD_BUDGET else 'NOT met'}")
    for name, part in r.first_load:
        print(f"  {name:<28} {part / 1000:7.1f} KB")
    per = r.cpu_per_console_min_s
    ratio = (f"{r.live_cpu_s / r.idle_cpu_s:.2f}x the baseline" if r.idle_cpu_s
             else "the baseline was under one clock tick")
    print(f"cpu         supervisor, no console open: {r.idle_cpu_min_s * 1000:.0f} ms per minute "
          f"(baseline); {r.consoles} open: {r.live_cpu_s / r.window_s * 60_000:.0f} ms per "
          f"minute, {ratio}")
    print(f"            per open console: {per * 1000:.1f} ms of CPU per minute "
          f"({per / 60:.3%} of one core); {r.events} events in {r.window_s:.0f} s")
    share = r.rate_share
    print(f"decode      {len(r.rates_alone)} pairs of answers ({r.max_tokens} tokens), one with "
          f"no console and one with {r.consoles} open and streaming; medians "
          f"{_median(r.rates_alone):.1f} vs {_median(r.rates_watched):.1f} tokens/s")
    print(f"            median of the pairs' ratios: {share:.1%} of the baseline "
          f"(target >= {RATE_TARGET:.0%}: {'met' if share >= RATE_TARGET else 'NOT met'})")
    return 0


def _median(values: tuple[float, ...]) -> float:
    return statistics.median(values) if values else 0.0

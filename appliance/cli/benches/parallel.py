"""``appliance bench parallel``: requests decoded together against the same one after another."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench parallel``."""
    p = cmds.add_parser("parallel", help="llm.parallel: aggregate tokens/s and the last "
                                         "request's first token, against one at a time")
    p.add_argument("--requests", type=int, default=4, choices=range(2, 9), metavar="2..8",
                   help="questions asked at once")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="rounds of each measurement, interleaved; the best of each counts")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Answer the questions one after another, then together, and print the ratios."""
    from appliance.bench.parallel import report_parallel, run_parallel_bench
    from appliance.cli import load

    settings = load(args)
    r = run_parallel_bench(resolve_llm(settings), settings.llm, requests=args.requests,
                           max_tokens=args.max_tokens, rounds=args.rounds)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "speedup": r.speedup,
                          "last_first": r.last_first, "alone": r.alone}))
    else:
        print("\n".join(report_parallel(r)))
    return 0

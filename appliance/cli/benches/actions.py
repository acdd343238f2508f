"""``appliance bench actions``: grammar-constrained decisions, the tool prefix, the fast path."""

from __future__ import annotations

import argparse

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench actions``."""
    p = cmds.add_parser("actions", help="grammar decoding speed, decision latency, fast path, "
                                        "decisions the model gets right")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds for the speed comparison")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Measure with the configured model."""
    from appliance.bench.actions import as_json, report, run_actions_bench
    from appliance.cli import load

    r = run_actions_bench(resolve_llm(load(args)), rounds=args.rounds)
    print(as_json(r) if args.json else "\n".join(report(r)))
    return 0

"""``appliance bench conversation``: a follow-up's first token with the kept state, and without.

It also measures the thinking budget's overhead on answers that do not think
(:mod:`appliance.bench.thinking`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench conversation``."""
    p = cmds.add_parser("conversation", help="a conversation's 4th turn: first token with the "
                                             "state the 3rd left, against from scratch")
    p.add_argument("--rounds", type=positive_int, default=3, help="conversations to time")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Answer a four-turn conversation ``--rounds`` times, and print the ratio."""
    from appliance.bench.conversation import report_conversation, run_conversation_bench
    from appliance.bench.thinking import report_thinking, run_thinking_bench
    from appliance.cli import load

    model = resolve_llm(load(args))
    r = run_conversation_bench(model, rounds=args.rounds, max_tokens=args.max_tokens)
    t = run_thinking_bench(model)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "ratio": r.ratio,
                          "thinking": {**dataclasses.asdict(t), "ratio": t.ratio}}))
    else:
        print("\n".join([*report_conversation(r), *report_thinking(t)]))
    return 0

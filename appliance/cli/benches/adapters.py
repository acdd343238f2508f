"""``appliance bench adapters``: LoRA switching, decoding and memory, against the base model."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench adapters``."""
    bench = cmds.add_parser("adapters", help="LoRA adapter switch cost, tokens/s and worker RSS")
    bench.add_argument("--rounds", type=positive_int, default=3,
                       help="rounds over the question set")
    bench.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write adapters for the configured model and measure them."""
    from appliance.bench.adapters import LOADED, RANKS, run_adapter_bench
    from appliance.cli import load

    settings = load(args)
    model = resolve_llm(settings)
    r = run_adapter_bench(settings, model, rounds=args.rounds, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "model": model.name,
                          "speed_ratio": {rank: r.speed_ratio(rank) for rank in RANKS}}))
        return 0
    mib = 1 << 20
    print(f"model {model.name}; adapters on attn q/k/v/o of every block, {args.rounds} rounds")
    print(f"switch    +{r.switch_ms:6.1f} ms to the first token after a change   "
          f"(the switch call alone {r.switch_call_ms:.3f} ms)")
    print(f"decode    base {r.tokens_per_s[0]:6.1f} tok/s   " + "   ".join(
        f"rank {rank} {r.tokens_per_s[rank]:6.1f} tok/s ({r.speed_ratio(rank):6.1%})"
        for rank in RANKS))
    base = r.rss_bytes[0]
    print("worker    RSS " + "   ".join(
        f"{n} adapters {r.rss_bytes[n] / mib:6.1f} MiB (+{(r.rss_bytes[n] - base) / mib:.1f})"
        for n in LOADED))
    return 0

"""``appliance bench knowledge``: the passage cache, retrieval hit rate, latency, build rate."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench knowledge``."""
    p = cmds.add_parser("knowledge", help="manual retrieval: hit rate, latency, build rate")
    p.add_argument("--chunks", type=int, default=10000, help="generated passages to time")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the question set")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build a generated corpus and the test manuals' index, and measure."""
    from appliance.bench.knowledge import (
        report,
        report_passage_cache,
        run_passage_cache_bench,
        run_retrieval_bench,
    )
    from appliance.cli import load

    settings = load(args)
    model = resolve_llm(settings).path
    cache = run_passage_cache_bench(model, rounds=args.rounds)
    r = run_retrieval_bench(chunks=args.chunks, rounds=args.rounds, model_path=model)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "chunks_per_s": r.chunks_per_s,
                          "mb_per_s": r.mb_per_s, "passage_cache": {
                              **dataclasses.asdict(cache), "ratio": cache.ratio}}))
    else:
        print("\n".join(report_passage_cache(cache) + report(r)))
    return 0

"""``appliance bench knowledge``: passage cache, prompt lookup, retrieval, refusals, build rate."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench knowledge``."""
    p = cmds.add_parser("knowledge", help="manual retrieval: hit rate, refusals, latency, "
                                          "build rate")
    p.add_argument("--chunks", type=int, default=10000, help="generated passages to time")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds over the question set")
    p.add_argument("--lookup-prompts", type=int, default=8,
                   help="quoting prompts answered with and without prompt-lookup drafts "
                        "(0: skip)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build a generated corpus and the test manuals' index, and measure."""
    from appliance.bench.manuals import MANUALS
    from appliance.bench.passage_cache import report_passage_cache, run_passage_cache_bench
    from appliance.bench.prompt_lookup import report_prompt_lookup, run_prompt_lookup_bench
    from appliance.bench.retrieval import report, run_retrieval_bench
    from appliance.cli import load

    settings = load(args)
    resolved = resolve_llm(settings)
    model = resolved.path
    cache = run_passage_cache_bench(model, rounds=args.rounds)
    lookup = (run_prompt_lookup_bench(resolved, MANUALS, prompts=args.lookup_prompts,
                                      rounds=args.rounds)
              if args.lookup_prompts > 0 else None)
    r = run_retrieval_bench(chunks=args.chunks, rounds=args.rounds, model_path=model,
                            min_score=settings.knowledge.min_score)
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "chunks_per_s": r.chunks_per_s,
                          "refusal_precision": r.refusals.precision,
                          "refusal_recall": r.refusals.recall,
                          "mb_per_s": r.mb_per_s, "passage_cache": {
                              **dataclasses.asdict(cache), "ratio": cache.ratio},
                          "prompt_lookup": None if lookup is None else {
                              **dataclasses.asdict(lookup),
                              "accepted_share": lookup.accepted_share,
                              "drafted_share": lookup.drafted_share,
                              "bound_ratio": lookup.bound_ratio}}))
    else:
        lines = report_passage_cache(cache)
        if lookup is not None:
            lines += report_prompt_lookup(lookup)
        print("\n".join(lines + report(r)))
    return 0

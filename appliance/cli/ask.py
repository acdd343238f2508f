"""``appliance ask TEXT``: one question to the local model, answered in the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from appliance.errors import UsageError

if TYPE_CHECKING:
    from appliance.llm import Chunk


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``ask`` command."""
    p = sub.add_parser("ask", help="ask the local model one question",
                       description="Ask the local model one question and stream the answer.")
    p.add_argument("text", help="the question")
    p.add_argument("--max-tokens", type=int, metavar="N", help="cap the answer at N tokens")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"text", "tokens", "finish_reason", ...}')
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the model, answer, print."""
    from appliance.catalog import resolve_llm
    from appliance.cli import load
    from appliance.llm import ChatRequest
    from appliance.llm.engine import Engine  # llama_cpp: loaded only when a model runs

    if not args.text.strip():
        raise UsageError("ask: the question is empty")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"ask: --max-tokens must be at least 1, got {args.max_tokens}")
    settings = load(args)
    engine = Engine(settings.llm, resolve_llm(settings))

    def show(chunk: Chunk) -> None:
        sys.stdout.write(chunk.delta)
        sys.stdout.flush()

    result = engine.complete(ChatRequest(args.text, max_tokens=args.max_tokens),
                             on_chunk=None if args.json else show)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        print()
        if result.finish_reason != "stop":
            print(f"[{result.finish_reason} after {result.tokens} tokens]", file=sys.stderr)
    return 0

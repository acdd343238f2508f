"""``appliance listen --wav FILE``: the voice pipeline on a file."""

from __future__ import annotations

import argparse
import dataclasses
import json

from appliance.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``listen`` command."""
    p = sub.add_parser("listen", help="recognize speech in a WAV file and answer it",
                       description="Recognize a WAV file (any rate and channels), answer "
                                   "the request, optionally speak the answer to a WAV.")
    p.add_argument("--wav", required=True, help="the speech to recognize")
    p.add_argument("--json", action="store_true",
                   help='print {"transcript", "answer", "ms_recognize", "ms_first_token", '
                        '"ms_first_audio", "evaluated_tokens", "partials", ...}')
    p.add_argument("--say", action="store_true", help="synthesize the answer (needs --out)")
    p.add_argument("--out", help="where --say writes the spoken answer (WAV)")
    p.add_argument("--realtime", action="store_true",
                   help="feed the file at the pace of a microphone (latencies then count from "
                        "the end of the last word, as a person hears them)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Recognize, answer, print."""
    from pathlib import Path

    from appliance.catalog import resolve_llm
    from appliance.cli import load
    from appliance.llm.engine import Engine
    from appliance.voice.listen import Listener
    from appliance.voice.tts import check_tts
    from appliance.voice.wake import check_wake

    if args.say and not args.out:
        raise UsageError("listen: --say needs --out REPLY.wav")
    settings = load(args)
    if args.say and settings.voice.tts == "none":
        raise UsageError("listen: --say needs voice.tts espeak-ng or piper, not none")
    check_tts(settings)
    check_wake(settings)
    engine = Engine(settings.llm, resolve_llm(settings))
    result = Listener(settings, engine).listen(
        Path(args.wav), Path(args.out) if args.say else None, realtime=args.realtime)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
        return 0
    print(f"heard:  {result.transcript or '(nothing)'}")
    if result.intent:
        print(f"intent: {result.intent}")
    elif result.answer:
        print(f"answer: {result.answer}")
    return 0

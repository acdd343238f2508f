"""One module per ``appliance bench`` benchmark: its arguments and its report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_private_service_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--speech``: what a bench's private ``appliance run`` serves."""
    parser.add_argument("--model", type=Path, help="GGUF to serve (default: the test model)")
    parser.add_argument("--speech", type=Path,
                        help="vosk model (default: voice.model_path, else the test model)")


def private_service_models(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The model and speech model of :func:`add_private_service_arguments`, resolved."""
    from appliance.bench.private_run import bench_models
    from appliance.cli import load

    settings = load(args)
    return bench_models(args.model, args.speech or settings.voice.model_path)

"""``appliance run``: the service (what systemd starts)."""

from __future__ import annotations

import argparse

from appliance.catalog import resolve_llm
from appliance.config import find_config
from appliance.llm.memory import check_fits
from appliance.voice.tts import check_tts


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` command."""
    p = sub.add_parser("run", help="run the appliance service (MQTT bridge, model, parts)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the config and the model, then supervise until SIGTERM."""
    from appliance.cli import load
    from appliance.service.supervisor import run as supervise

    settings = load(args, service=True)
    model = resolve_llm(settings)  # a missing model is a config error now, not a crash loop
    check_fits(model.path, settings.llm.n_ctx)  # and so is one that cannot fit in memory
    check_tts(settings)  # and a piper voice that is not there
    return supervise(settings, find_config(args.config))

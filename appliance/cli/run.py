"""``appliance run``: the service (what systemd starts)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` command."""
    p = sub.add_parser("run", help="run the appliance service (MQTT bridge, model, parts)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the config and the model, then supervise until SIGTERM."""
    from appliance.cli import load
    from appliance.config import find_config
    from appliance.hardware import cap_malloc_arenas, return_large_buffers
    from appliance.preflight import preflight

    settings = load(args, service=True)
    cap_malloc_arenas()  # before any thread allocates: a long-running service
    return_large_buffers()
    preflight(settings)  # what cannot work is one line now, not a crash loop under systemd
    from appliance.service.supervisor import run as supervise

    return supervise(settings, find_config(args.config))

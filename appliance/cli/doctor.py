"""``appliance doctor``: a table of health checks; exit code 1 when any fails."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``doctor`` command."""
    p = sub.add_parser("doctor", help="check that this device can run the appliance")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print one row per check."""
    from appliance.cli import load
    from appliance.doctor import run_checks

    worst = 0
    for check in run_checks(load(args)):
        print(f"{check.status:<5} {check.name:<13} {check.detail}")
        worst = max(worst, {"ok": 0, "warn": 0, "fail": 1}[check.status])
    return worst

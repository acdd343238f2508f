"""``appliance config check``: validate the config and print it as it will be used."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``config`` command group."""
    p = sub.add_parser("config", help="check and show the configuration")
    cmds = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = cmds.add_parser("check", help="validate the config and print the effective values")
    check.set_defaults(handler=run_check)


def plain(value: Any) -> Any:
    """Settings as plain YAML-able data (secrets are never in settings, only where to find them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.compare}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def run_check(args: argparse.Namespace) -> int:
    """Make ``run``'s start-up checks and print the effective config.

    Errors exit 2 (1 for a model too large for memory) through the CLI's error handling.
    """
    from appliance.cli import load
    from appliance.preflight import preflight

    settings = load(args)
    model = preflight(settings)
    print(f"# config: {settings.source}")
    print(f"# model: {model.name} -> {model.path}")
    print(yaml.safe_dump(plain(settings), sort_keys=False, allow_unicode=True), end="")
    return 0

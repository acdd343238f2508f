"""The ``appliance`` command line.

Each sub-command lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``handler`` to a function taking the
parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import appliance
from appliance import logs
from appliance.cli import (
    act,
    ask,
    bench,
    catalog_cmd,
    config_cmd,
    console_cmd,
    doctor,
    knowledge,
    listen,
    models,
    run,
)
from appliance.config import Settings, load_settings
from appliance.errors import ApplianceError
from appliance.hardware import calm_openmp

_COMMANDS = (run, ask, listen, act, config_cmd, console_cmd, doctor, models, catalog_cmd,
             knowledge, bench)


class _Version(argparse.Action):
    """``--version``: the package's version, read only when asked for (it costs an import)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        parser.exit(message=f"appliance {appliance.__version__}\n")


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    """``--config`` and ``--log-level``, which every command takes."""
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="config file (default: $APPLIANCE_CONFIG, "
                             "/etc/appliance/config.yaml, ./config.yaml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=default,
                        help="override log.level (interactive commands default to warning)")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command parser below ``parser``, however deeply nested (``config check``)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                found += [child, *_subparsers(child)]
    return found


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser.

    ``--config`` and ``--log-level`` are accepted before the command and after it
    (``appliance ask hi --config x.yaml``). A command's copies default to
    SUPPRESS, so an option given later wins and an absent one leaves the
    earlier value alone.
    """
    parser = argparse.ArgumentParser(
        prog="appliance", description="Offline AI appliance: local LLM, speech, MQTT and GPIO.")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    _add_common(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(sub)
    for child in _subparsers(parser):
        _add_common(child, argparse.SUPPRESS)
    return parser


def load(args: argparse.Namespace, *, service: bool = False) -> Settings:
    """Load the settings named by ``args`` and configure logging for this command.

    Interactive commands log at ``warning`` unless ``--log-level`` says otherwise,
    so that their own output stays readable; ``service`` commands use ``log.level``.
    """
    settings = load_settings(args.config)
    level = args.log_level or (settings.log.level if service else "warning")
    logs.configure(level, settings.log.format)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level or "warning")
    calm_openmp(os.environ)  # before a command loads llama.cpp (ask, listen, benches)
    try:
        return int(args.handler(args))
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130

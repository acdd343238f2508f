"""``appliance knowledge``: the device's own manuals, indexed for answers with sources."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``knowledge`` command group."""
    p = sub.add_parser("knowledge", help="index and search the device's manuals")
    p.add_subparsers(dest="knowledge_command", required=True, metavar="SUBCOMMAND")

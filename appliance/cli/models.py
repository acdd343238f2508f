"""``appliance models list | pull NAME | verify [NAME]``: the model catalog on this device.

Which catalog is trusted, and how a pull goes, is :mod:`appliance.model_pull`'s
(the console's Models page pulls the same way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.catalog import CatalogEntry, lookup
from appliance.config.schema import Settings
from appliance.download import Progress, verify
from appliance.errors import ApplianceError
from appliance.model_pull import model_files, model_state, pull_model, trusted_catalog


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` command group."""
    p = sub.add_parser("models", help="list, download and verify models")
    cmds = p.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    cmds.add_parser("list", help="the catalog and what is installed").set_defaults(
        handler=run_list)
    pull = cmds.add_parser("pull", help="download a model (resumable) and verify its sha256")
    pull.add_argument("name")
    pull.add_argument("--allow-unverified", action="store_true",
                      help="accept a model whose sha256 the catalog does not know yet")
    pull.set_defaults(handler=run_pull)
    ver = cmds.add_parser("verify", help="check installed models against their sha256")
    ver.add_argument("name", nargs="?", help="one model (default: every installed one)")
    ver.set_defaults(handler=run_verify)


def _offline(message: str) -> None:
    print(f"appliance: {message}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    from appliance.cli import load

    return load(args)


def run_list(args: argparse.Namespace) -> int:
    """Print the catalog with each model's state."""
    settings = _settings(args)
    catalog, _mirror = trusted_catalog(settings, gated=False, offline=_offline)
    rows = [("NAME", "KIND", "SIZE", "STATE", "LICENSE")]
    for entry in catalog.values():
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "?"
        rows.append((entry.name, entry.kind, size, model_state(entry, settings.models_dir)[0],
                     entry.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Download one model into ``<data_dir>/models``."""
    settings = _settings(args)
    entry, line = pull_model(settings, args.name, lambda entry, _path: Progress(entry.name),
                             allow_unverified=args.allow_unverified)
    print(line)
    return run_verify_one(entry, settings.models_dir) if entry.package is not None else 0


def run_verify_one(entry: CatalogEntry, models_dir: Path) -> int:
    """Verify one installed model (and its companion file); 0 when it matches, 1 otherwise."""
    target = entry.location(models_dir)
    if entry.sha256 is None or target.is_dir():
        print(f"{entry.name}: present at {target} (no file hash to check)")
        return 0
    for path, _source, sha256, _size in model_files(entry, target):
        if sha256 is not None and not verify(path, sha256, force=True):
            print(f"{entry.name}: sha256 MISMATCH at {path}; do not use it, pull it again",
                  file=sys.stderr)
            return 1
    print(f"{entry.name}: ok ({target})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify one model, or every installed one."""
    settings = _settings(args)
    models_dir = settings.models_dir
    catalog, _mirror = trusted_catalog(settings, gated=True, offline=_offline)
    entries = [lookup(args.name, catalog)] if args.name else [
        e for e in catalog.values() if model_state(e, models_dir)[0] != "missing"]
    if not entries:
        print("no models installed")
        return 0
    worst = 0
    for entry in entries:
        try:
            worst = max(worst, run_verify_one(entry, models_dir))
        except (ApplianceError, OSError) as exc:
            print(f"{entry.name}: {exc}", file=sys.stderr)
            worst = 1
    return worst

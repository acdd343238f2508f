"""``appliance models list | pull NAME | verify [NAME]``: the model catalog on this device."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.catalog import CatalogEntry, load_catalog, lookup
from appliance.download import Progress, download, is_verified, unpack_zip, verify
from appliance.errors import ApplianceError, CatalogError, DownloadError


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


def _models_dir(args: argparse.Namespace) -> Path:
    from appliance.cli import load

    return load(args).models_dir


def _state(entry: CatalogEntry, models_dir: Path) -> tuple[str, Path | None]:
    """``(state, path)``: missing, installed, verified (file stamped) or packaged."""
    try:
        path = entry.location(models_dir)
    except CatalogError:
        return "missing", None
    if not path.exists():
        return "missing", None
    if entry.sha256 and path.is_file() and is_verified(path, entry.sha256):
        return "verified", path
    return "installed", path


def run_list(args: argparse.Namespace) -> int:
    """Print the catalog with each model's state."""
    models_dir = _models_dir(args)
    rows = [("NAME", "KIND", "SIZE", "STATE", "LICENSE")]
    for entry in load_catalog().values():
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "?"
        rows.append((entry.name, entry.kind, size, _state(entry, models_dir)[0], entry.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _files(entry: CatalogEntry,
           path: Path) -> list[tuple[Path, str | None, str | None, int | None]]:
    """``(path, url, sha256, size)`` of the model's file and of its companion, if it has one."""
    files = [(path, entry.url, entry.sha256, entry.size)]
    if entry.companion_suffix:
        files.append((path.with_name(path.name + entry.companion_suffix),
                      entry.url and entry.url + entry.companion_suffix, entry.companion_sha256,
                      None))
    return files


def run_pull(args: argparse.Namespace) -> int:
    """Download one model into ``<data_dir>/models``."""
    entry = lookup(args.name)
    models_dir = _models_dir(args)
    if entry.url is None:
        path = entry.location(models_dir)  # raises with the pip command when absent
        print(f"{entry.name}: shipped in the PyPI package {entry.package}, at {path}")
        return run_verify_one(entry, models_dir)
    if entry.sha256 is None and not args.allow_unverified:
        raise DownloadError(f"{entry.name}: the catalog has no sha256 for it yet; pass "
                            "--allow-unverified to accept it unchecked")
    target = entry.location(models_dir)
    if target.is_dir():
        print(f"{entry.name}: already at {target}")
        return 0
    fetched = False
    for path, url, sha256, size in _files(entry, target):
        if path.exists() and (sha256 is None or verify(path, sha256)):
            continue
        assert url is not None
        archive = url.endswith(".zip")
        dest = path.with_name(path.name + ".zip") if archive else path
        download(url, dest, sha256, size=size, progress=Progress(entry.name))
        if archive:
            unpack_zip(dest, path)
            dest.unlink()
        fetched = True
    if not fetched:
        print(f"{entry.name}: already at {target}")
    else:
        print(f"{entry.name}: {'verified and ' if entry.sha256 else ''}installed at {target}")
    return 0


def run_verify_one(entry: CatalogEntry, models_dir: Path) -> int:
    """Verify one installed model (and its companion file); 0 when it matches, 1 otherwise."""
    target = entry.location(models_dir)
    if entry.sha256 is None or target.is_dir():
        print(f"{entry.name}: present at {target} (no file hash to check)")
        return 0
    for path, _url, sha256, _size in _files(entry, target):
        if sha256 is not None and not verify(path, sha256, force=True):
            print(f"{entry.name}: sha256 MISMATCH at {path}; do not use it, pull it again",
                  file=sys.stderr)
            return 1
    print(f"{entry.name}: ok ({target})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify one model, or every installed one."""
    models_dir = _models_dir(args)
    entries = [lookup(args.name)] if args.name else [
        e for e in load_catalog().values() if _state(e, models_dir)[0] != "missing"]
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

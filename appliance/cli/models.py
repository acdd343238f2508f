"""``appliance models list | pull NAME | verify [NAME]``: the model catalog on this device.

Which catalog is trusted is :func:`appliance.trust.policy.catalog_source`'s call:
the one shipped in the package, a signed site mirror (``models.mirror``, every
file checked through TUF), or, only when allowed, an unsigned ``$APPLIANCE_CATALOG``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.catalog import CatalogEntry, load_catalog, lookup
from appliance.config.schema import Settings
from appliance.download import Progress, download, is_verified, unpack_zip, verify
from appliance.errors import ApplianceError, CatalogError, DownloadError, TrustError

if TYPE_CHECKING:  # python-tuf loads only when a signed mirror is used
    from appliance.trust.client import SignedMirror


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


def _settings(args: argparse.Namespace) -> Settings:
    from appliance.cli import load

    return load(args)


def _catalog(settings: Settings, *, gated: bool, offline_ok: bool
             ) -> tuple[Mapping[str, CatalogEntry], SignedMirror | None]:
    """The trusted catalog, and the signed mirror it came from (``None``: not signed).

    ``gated``: an unsigned site catalog is refused unless allowed (pull, verify).
    ``offline_ok``: when the mirror cannot be reached, the catalog it last
    verified will do (list, verify); a refusal never falls back.
    """
    from appliance.trust.policy import catalog_source

    try:
        source = catalog_source(settings)
    except TrustError:
        if not gated and settings.models.mirror is None:
            return load_catalog(), None  # listing what a site offers trusts nothing
        load_catalog()  # a catalog that does not even parse is named as such first
        raise
    if source.kind != "signed":
        return load_catalog(source.path), None
    from appliance.trust.client import SignedMirror

    assert source.mirror is not None
    mirror = SignedMirror(source.mirror, settings.models.trust_root, settings.data_dir)
    try:
        mirror.refresh()
        return load_catalog(mirror.fetch_catalog()), mirror
    except TrustError:
        raise
    except DownloadError as exc:
        if not offline_ok or not mirror.catalog_path.is_file():
            raise
        print(f"appliance: {exc}; using the catalog verified before", file=sys.stderr)
        return load_catalog(mirror.catalog_path), None


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
    settings = _settings(args)
    catalog, _mirror = _catalog(settings, gated=False, offline_ok=True)
    rows = [("NAME", "KIND", "SIZE", "STATE", "LICENSE")]
    for entry in catalog.values():
        size = f"{entry.size / 1e6:.0f} MB" if entry.size else "?"
        rows.append((entry.name, entry.kind, size, _state(entry, settings.models_dir)[0],
                     entry.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _files(entry: CatalogEntry,
           path: Path) -> list[tuple[Path, str | None, str | None, int | None]]:
    """``(path, source, sha256, size)`` of the model's file and of its companion, if any.

    The source is the entry's URL, or its target name in the signed mirror.
    """
    source = entry.url or entry.target
    files = [(path, source, entry.sha256, entry.size)]
    if entry.companion_suffix:
        files.append((path.with_name(path.name + entry.companion_suffix),
                      source and source + entry.companion_suffix, entry.companion_sha256,
                      None))
    return files


def run_pull(args: argparse.Namespace) -> int:
    """Download one model into ``<data_dir>/models``."""
    settings = _settings(args)
    catalog, mirror = _catalog(settings, gated=True, offline_ok=False)
    entry = lookup(args.name, catalog)
    models_dir = settings.models_dir
    if entry.package is not None:
        path = entry.location(models_dir)  # raises with the pip command when absent
        print(f"{entry.name}: shipped in the PyPI package {entry.package}, at {path}")
        return run_verify_one(entry, models_dir)
    if (entry.target is None) != (mirror is None):
        raise TrustError(f"{entry.name}: 'target:' names a file of a signed mirror, 'url:' one "
                         "elsewhere; this catalog is " + ("signed, so only targets are "
                         "trusted" if mirror else "not signed, so it has no targets"))
    if entry.sha256 is None and not args.allow_unverified:
        raise DownloadError(f"{entry.name}: the catalog has no sha256 for it yet; pass "
                            "--allow-unverified to accept it unchecked")
    target = entry.location(models_dir)
    if target.is_dir():
        print(f"{entry.name}: already at {target}")
        return 0
    fetched = False
    for path, source, sha256, size in _files(entry, target):
        if path.exists() and (sha256 is None or verify(path, sha256)):
            continue
        assert source is not None
        archive = source.endswith(".zip")
        dest = path.with_name(path.name + ".zip") if archive else path
        if mirror is not None:
            mirror.pull(source, dest, sha256, progress=Progress(entry.name))
        else:
            download(source, dest, sha256, size=size, progress=Progress(entry.name))
        if archive:
            unpack_zip(dest, path)
            dest.unlink()
        fetched = True
    if not fetched:
        print(f"{entry.name}: already at {target}")
    else:
        signed = "signed, " if mirror is not None else ""
        print(f"{entry.name}: {signed}{'verified and ' if entry.sha256 else ''}installed at "
              f"{target}")
    return 0


def run_verify_one(entry: CatalogEntry, models_dir: Path) -> int:
    """Verify one installed model (and its companion file); 0 when it matches, 1 otherwise."""
    target = entry.location(models_dir)
    if entry.sha256 is None or target.is_dir():
        print(f"{entry.name}: present at {target} (no file hash to check)")
        return 0
    for path, _source, sha256, _size in _files(entry, target):
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
    catalog, _mirror = _catalog(settings, gated=True, offline_ok=True)
    entries = [lookup(args.name, catalog)] if args.name else [
        e for e in catalog.values() if _state(e, models_dir)[0] != "missing"]
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

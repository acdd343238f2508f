"""Pulling a model from the trusted catalog, the same for ``appliance models pull`` and the console.

Which catalog is trusted is :func:`appliance.trust.policy.catalog_source`'s call:
the one shipped in the package, a signed site mirror (``models.mirror``, every
file checked through TUF), or, only when allowed, an unsigned ``$APPLIANCE_CATALOG``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.catalog import CatalogEntry, load_catalog, lookup
from appliance.config.schema import Settings
from appliance.download import download, is_verified, unpack_zip, verify
from appliance.errors import CatalogError, DownloadError, TrustError

if TYPE_CHECKING:  # python-tuf loads only when a signed mirror is used
    from appliance.trust.client import SignedMirror

OnProgress = Callable[[int, int | None], None]
"""Bytes done, and the total when known (called on the downloading thread)."""


def trusted_catalog(settings: Settings, *, gated: bool,
                    offline: Callable[[str], None] | None = None,
                    ) -> tuple[Mapping[str, CatalogEntry], SignedMirror | None]:
    """The trusted catalog, and the signed mirror it came from (``None``: not signed).

    ``gated``: an unsigned site catalog is refused unless allowed (pull, verify).
    ``offline``: when the mirror cannot be reached, the catalog it last verified
    will do, and ``offline`` hears why (list, verify); a refusal never falls back.
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
        if offline is None or not mirror.catalog_path.is_file():
            raise
        offline(f"{exc}; using the catalog verified before")
        return load_catalog(mirror.catalog_path), None


def model_state(entry: CatalogEntry, models_dir: Path) -> tuple[str, Path | None]:
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


def model_files(entry: CatalogEntry,
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


def pull_model(settings: Settings, name: str,
               progress: Callable[[CatalogEntry, Path], OnProgress], *,
               allow_unverified: bool = False) -> tuple[CatalogEntry, str]:
    """Download model ``name`` into ``<data_dir>/models``, verified; its entry and one line.

    ``progress(entry, path)``, as each file's download starts, gives its progress
    callback. A model shipped in a PyPI package is not downloaded (the line says
    where it is).
    """
    catalog, mirror = trusted_catalog(settings, gated=True)
    entry = lookup(name, catalog)
    models_dir = settings.models_dir
    if entry.package is not None:
        path = entry.location(models_dir)  # raises with the pip command when absent
        return entry, f"{entry.name}: shipped in the PyPI package {entry.package}, at {path}"
    if (entry.target is None) != (mirror is None):
        raise TrustError(f"{entry.name}: 'target:' names a file of a signed mirror, 'url:' one "
                         "elsewhere; this catalog is " + ("signed, so only targets are "
                         "trusted" if mirror else "not signed, so it has no targets"))
    if entry.sha256 is None and not allow_unverified:
        raise DownloadError(f"{entry.name}: the catalog has no sha256 for it yet; pass "
                            "--allow-unverified to accept it unchecked")
    target = entry.location(models_dir)
    fetched = False
    for path, source, sha256, size in ([] if target.is_dir() else model_files(entry, target)):
        if path.exists() and (sha256 is None or verify(path, sha256)):
            continue
        assert source is not None
        archive = source.endswith(".zip")
        dest = path.with_name(path.name + ".zip") if archive else path
        heard = progress(entry, path)
        if mirror is not None:
            mirror.pull(source, dest, sha256, progress=heard)
        else:
            download(source, dest, sha256, size=size, progress=heard)
        if archive:
            unpack_zip(dest, path)
            dest.unlink()
        fetched = True
    if not fetched:
        return entry, f"{entry.name}: already at {target}"
    signed = "signed, " if mirror is not None else ""
    return entry, (f"{entry.name}: {signed}{'verified and ' if entry.sha256 else ''}installed "
                   f"at {target}")

"""Which catalog a device may use for ``models pull`` and ``verify``, and how doctor shows it.

- **built-in**: the catalog shipped in the package, pinned by the package's own
  hash; used when no site catalog is configured.
- **signed**: ``models.mirror``, trusted through TUF from the root pinned at
  ``models.trust_root`` (:mod:`.client`). Without that root file, refused.
- **unsigned**: a catalog file named by ``$APPLIANCE_CATALOG``. Anyone who can
  change it chooses the weights every device trusts, so it is refused unless
  ``models.allow_unsigned_site_catalog: true``, which doctor shows as a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from tuf.api.exceptions import StorageError
from tuf.api.metadata import Metadata
from tuf.api.serialization import DeserializationError

from appliance.catalog import default_catalog_path
from appliance.config.schema import Settings
from appliance.errors import TrustError
from appliance.trust.clock import ClockMark, signed_at

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class CatalogSource:
    """Where this device's catalog comes from."""

    kind: Literal["builtin", "unsigned", "signed"]
    path: Path | None = None  # built-in and unsigned: the catalog file
    mirror: str | None = None  # signed: the mirror's base URL


def catalog_source(settings: Settings) -> CatalogSource:
    """The catalog to trust, or a one-line :class:`TrustError` saying why there is none."""
    models = settings.models
    if models.mirror is not None:
        if not models.trust_root.is_file():
            raise TrustError(
                f"models.mirror is set, but there is no pinned root at {models.trust_root} "
                "(models.trust_root): copy the site's root.json there (docs/models.md)")
        return CatalogSource("signed", mirror=models.mirror)
    if site := os.environ.get("APPLIANCE_CATALOG"):
        if not models.allow_unsigned_site_catalog:
            raise TrustError(
                f"$APPLIANCE_CATALOG={site} is an unsigned site catalog: refused; serve it "
                "from a signed mirror (appliance catalog, models.mirror) or set "
                "models.allow_unsigned_site_catalog: true")
        return CatalogSource("unsigned", path=Path(site))
    return CatalogSource("builtin", path=default_catalog_path())


def signing_state(settings: Settings) -> tuple[Status, str]:
    """The catalog's signing state for ``doctor``, from what is on the device (no network)."""
    try:
        source = catalog_source(settings)
    except TrustError as exc:
        return "fail", str(exc)
    if source.kind == "builtin":
        return "ok", f"built-in catalog {source.path} (pinned by the package)"
    if source.kind == "unsigned":
        return "warn", (f"UNSIGNED site catalog {source.path}: whoever can change it chooses "
                        "the weights (models.allow_unsigned_site_catalog: true)")
    metadata = settings.data_dir / "trust" / "metadata"
    try:
        root = Metadata.from_file(str(metadata / "root.json")).signed
        timestamp = Metadata.from_file(str(metadata / "timestamp.json")).signed
    except (StorageError, DeserializationError, ValueError):
        return "warn", (f"signed mirror {source.mirror}: nothing verified yet; "
                        "run: appliance models list")
    mark = ClockMark(settings.data_dir / "trust" / "clock")
    reference = mark.reference(datetime.now(UTC))
    when = signed_at(timestamp)
    signed = f", signed {when:%Y-%m-%d %H:%M}" if when else ""
    detail = (f"signed mirror {source.mirror}: root v{root.version}, timestamp "
              f"v{timestamp.version}{signed}, expires {timestamp.expires:%Y-%m-%d %H:%M} UTC")
    if timestamp.is_expired(reference):
        return "warn", f"{detail}: EXPIRED; the site must re-sign (appliance catalog sign)"
    return "ok", detail

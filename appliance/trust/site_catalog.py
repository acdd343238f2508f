"""The catalog a site publishes: ``catalog.yaml``, itself a target of the signed mirror.

``appliance catalog add`` puts a model file (and a piper voice's ``.json``) into
the mirror as targets and adds its entry to the catalog, in one targets version.
An entry names its file by ``target:`` (not ``url:``): a device fetches it from
the same mirror, against the length and sha256 that the targets metadata signs.
The new catalog is checked with the device's own parser before it is published,
so a site cannot publish a catalog that devices would reject.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from appliance.catalog import load_catalog
from appliance.download import sha256_of
from appliance.errors import TrustError
from appliance.trust.client import CATALOG_TARGET
from appliance.trust.repository import SiteRepository

HEADER = ("# The site's model catalog, published by `appliance catalog add`; devices trust it\n"
          "# only through the signed metadata beside it (docs/models.md).\n")


def add_model(repo: SiteRepository, name: str, file: Path, kind: str,
              extra: dict[str, Any]) -> dict[str, Any]:
    """Publish ``file`` as model ``name`` of ``kind``; returns the catalog entry written."""
    if not file.is_file():
        raise TrustError(f"{file}: no such file to add")
    files: dict[str, Path | bytes] = {file.name: file}
    entry: dict[str, Any] = {
        "kind": kind, "file": file.stem if file.suffix == ".zip" else file.name,
        "target": file.name, "sha256": sha256_of(file), "size": file.stat().st_size,
        **{key: value for key, value in extra.items() if value is not None}}
    if kind == "piper":  # a voice's settings come beside it, as <voice>.onnx.json
        companion = file.with_name(file.name + ".json")
        if not companion.is_file():
            raise TrustError(f"{companion}: a piper voice needs its settings file beside it")
        files[companion.name] = companion
        entry["companion_sha256"] = sha256_of(companion)
    current = repo.target_bytes(CATALOG_TARGET)
    data = yaml.safe_load(current) if current else None
    models = dict(data["models"]) if isinstance(data, dict) else {}
    models[name] = entry
    text = HEADER + yaml.safe_dump({"models": models}, sort_keys=False)
    _check(text)
    repo.put_targets({**files, CATALOG_TARGET: text.encode()})
    return entry


def _check(text: str) -> None:
    """Parse ``text`` as a device would; raises the device's one-line CatalogError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CATALOG_TARGET
        path.write_text(text)
        load_catalog(path)

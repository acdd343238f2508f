"""Find, parse and validate ``config.yaml`` into :class:`~appliance.config.schema.Settings`.

YAML is composed into nodes first, so that every value keeps the line it came
from; the dataclasses of :mod:`appliance.config.schema` then drive a small
typed conversion. Every problem becomes one :class:`~appliance.errors.ConfigError`
that names the file, the line and the key path.

Parsing is bounded: the file's size, its nesting and the number of values once
YAML aliases are expanded (a "billion laughs" file is refused in a tenth of a second),
and every number is finite.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from appliance.config.checks import check_settings
from appliance.config.schema import Settings, nearest_line
from appliance.errors import ConfigError

SEARCH_PATH = (Path("/etc/appliance/config.yaml"), Path("config.yaml"))
"""Where the config is looked for after ``--config`` and ``$APPLIANCE_CONFIG``."""

MAX_FILE_BYTES = 1 << 20
"""The largest config file read (a real one is a few KiB)."""
MAX_DEPTH = 64
"""How deeply mappings and lists may nest."""
MAX_VALUES = 100_000
"""How many values the file may hold once aliases are expanded."""

_MISSING = object()


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use: ``explicit``, ``$APPLIANCE_CONFIG``, then :data:`SEARCH_PATH`.

    Returns ``None`` when no file is named and none of the usual places has one.
    A file that is named but missing is an error.
    """
    named = explicit or os.environ.get("APPLIANCE_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            origin = "--config" if explicit else "$APPLIANCE_CONFIG"
            raise ConfigError(f"{origin} names {str(path)!r}, which is not a readable file",
                              file=str(path))
        return path
    return next((p for p in SEARCH_PATH if p.is_file()), None)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load and validate the config at ``path`` (found with :func:`find_config` when omitted)."""
    found = find_config(path)
    if found is None:
        return _finish(Settings(), "<defaults>", {})
    try:
        with found.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(found)) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_FILE_BYTES >> 20} MiB; this is not a config file",
                          file=str(found))
    return parse_settings(text, str(found), base_dir=found.parent)


def parse_settings(text: str, file: str = "<config>", base_dir: Path = Path()) -> Settings:
    """Validate YAML ``text``.

    ``file`` names it in errors; relative paths resolve from ``base_dir``.
    """
    lines: dict[str, int] = {}
    try:
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
            data = {} if node is None else _Plain(loader, file, lines).convert(node, "", 0)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"invalid YAML: {exc.problem}", file=file,
                          line=mark.line + 1 if mark else 0) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {str(exc).splitlines()[0]}", file=file) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", file=file, line=1)
    conv = _Converter(file, lines, base_dir)
    settings = conv.build(Settings, data, "")
    return _finish(settings, file, lines)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to compose nodes nested deeper than :data:`MAX_DEPTH`.

    PyYAML composes recursively, so without this a file of a few thousand ``[``
    would exhaust Python's stack.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep",
                self.peek_event().start_mark)
        self._depth += 1
        try:
            return typing.cast(yaml.Node, super().compose_node(parent, index))
        finally:
            self._depth -= 1


class _Plain:
    """Turns composed YAML nodes into plain Python data, recording each key path's line.

    An alias is expanded where it is used, so the values are counted as they are
    made: past :data:`MAX_VALUES` the file is refused, as is one that nests deeper
    than :data:`MAX_DEPTH` through an alias to itself.
    """

    def __init__(self, loader: yaml.SafeLoader, file: str, lines: dict[str, int]) -> None:
        self.loader, self.file, self.lines = loader, file, lines
        self.budget = MAX_VALUES

    def error(self, node: yaml.Node, key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=self.file, line=node.start_mark.line + 1,
                           key=key or "<top>")

    def too_much(self, key: str, problem: str) -> ConfigError:
        """An error about a whole section; an aliased node's own line is where its anchor is."""
        section = _section(key)
        return ConfigError(problem, file=self.file, line=nearest_line(self.lines, section),
                           key=section or "<top>")

    def convert(self, node: yaml.Node, key: str, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise self.too_much(key, f"more than {MAX_VALUES} values once YAML aliases are "
                                     "expanded; is this an alias bomb?")
        if depth > MAX_DEPTH:
            raise self.too_much(key, f"nested more than {MAX_DEPTH} levels deep "
                                     "(an alias that contains itself?)")
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                name = self.scalar(knode, key) if isinstance(knode, yaml.ScalarNode) else None
                if not isinstance(name, str):
                    got = repr(name) if isinstance(knode, yaml.ScalarNode) else "a collection"
                    raise self.error(knode, key, f"keys must be strings, got {got}")
                path = f"{key}.{name}" if key else name
                if name in out:
                    raise self.error(knode, path, "duplicate key")
                self.lines[path] = knode.start_mark.line + 1
                out[name] = self.convert(vnode, path, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, f"{key}[{i}]", depth + 1)
                    for i, item in enumerate(node.value)]
        return self.scalar(node, key)

    def scalar(self, node: yaml.Node, key: str) -> Any:
        try:
            return self.loader.construct_object(node)
        except (ValueError, OverflowError) as exc:  # a timestamp's month 13, a 5,000-digit int
            text = node.value if len(node.value) <= 24 else node.value[:24] + "..."
            reason = str(exc).partition(":")[0]
            raise self.error(node, key, f"cannot read {text!r}: {reason}") from None


def _section(key: str) -> str:
    """The top-level part of a key path, for errors where the full path would be a screenful."""
    return re.split(r"[.\[]", key, maxsplit=1)[0]


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


class _Converter:
    """Converts plain data to the schema's types, raising located errors."""

    def __init__(self, file: str, lines: Mapping[str, int], base_dir: Path) -> None:
        self.file, self.lines, self.base_dir = file, lines, base_dir

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=self.file, line=nearest_line(self.lines, key), key=key)

    def build(self, cls: type, data: Any, key: str) -> Any:
        if not isinstance(data, dict):
            raise self.error(key or "<top>", f"expected a mapping, got {_describe(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.compare}
        for name in data:
            if name not in fields:
                path = f"{key}.{name}" if key else name
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else (
                    f"; expected one of: {', '.join(fields)}")
                raise self.error(path, f"unknown key{hint}")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            path = f"{key}.{name}" if key else name
            raw = data.get(name, _MISSING)
            if raw is _MISSING:
                if (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING):
                    raise self.error(key or path, f"missing required key {name!r}")
                continue
            value = self.convert(raw, hints[name], path)
            self.check(value, f.metadata, path)
            values[name] = value
        return cls(**values)

    def check(self, value: Any, meta: Mapping[str, Any], key: str) -> None:
        if value is None:
            return
        low, high = meta.get("low"), meta.get("high")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(key, f"{value!r} is out of range; expected {low} to {high}")
        if meta.get("exists") and not Path(value).exists():
            raise self.error(key, f"{str(value)!r} does not exist")

    def convert(self, value: Any, tp: Any, key: str) -> Any:
        if tp is Any:  # free-form data (an action's payload template, a JSON schema)
            return self.json_like(value, key)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            errors: list[ConfigError] = []
            for option in options:
                try:
                    return self.convert(value, option, key)
                except ConfigError as exc:
                    errors.append(exc)
            if len(errors) == 1:
                raise errors[0]
            names = " or ".join(_type_name(o) for o in options)
            raise self.error(key, f"expected {names}, got {_describe(value)}")
        if origin is Literal:
            if value not in args:
                choices = ", ".join(str(a) for a in args)
                raise self.error(key, f"expected one of {choices}, got {_describe(value)}")
            return value
        if origin is tuple:
            if not isinstance(value, list):
                raise self.error(key, f"expected a list, got {_describe(value)}")
            return tuple(self.convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin in (Mapping, dict):
            if not isinstance(value, dict):
                raise self.error(key, f"expected a mapping, got {_describe(value)}")
            return {str(k): self.convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key)
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(key, f"expected true or false, got {_describe(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(key, f"expected an integer, got {_describe(value)}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(key, f"expected a number, got {_describe(value)}")
            return self.finite(value, key)
        if tp is str:
            if not isinstance(value, str):
                raise self.error(key, f"expected a string, got {_describe(value)}")
            return value
        if tp is Path:
            if not isinstance(value, str) or not value:
                raise self.error(key, f"expected a path, got {_describe(value)}")
            path = Path(value).expanduser()
            return path if path.is_absolute() else self.base_dir / path
        raise TypeError(f"schema type {tp!r} at {key} has no converter")


    def finite(self, value: float, key: str) -> float:
        """``value`` as a float; NaN and the infinities pass no range check, so they are refused."""
        try:
            number = float(value)
        except OverflowError:
            raise self.error(key, "the number is too large") from None
        if not math.isfinite(number):
            raise self.error(key, f"expected a finite number, got {number!r}")
        return number

    def json_like(self, value: Any, key: str) -> Any:
        """Free-form ``value`` as is, once it is known to hold only what JSON can carry."""
        if isinstance(value, dict):
            for name, item in value.items():
                self.json_like(item, f"{key}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.json_like(item, f"{key}[{i}]")
        elif isinstance(value, float):
            self.finite(value, key)
        elif value is not None and not isinstance(value, str | int):  # bool is an int
            raise self.error(key, f"expected text, a number, true/false, null, a list or a "
                                  f"mapping, got {value!r}")
        return value


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _finish(settings: Settings, file: str, lines: dict[str, int]) -> Settings:
    """Fill derived defaults and check what spans several keys."""
    settings = dataclasses.replace(settings, source=file, lines=lines,
                                   device_id=settings.device_id or socket.gethostname())

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=file, line=settings.line_of(key), key=key)

    check_settings(settings, fail)
    return settings

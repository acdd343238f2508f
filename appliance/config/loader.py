"""Find, parse and validate ``config.yaml`` into :class:`~appliance.config.schema.Settings`.

YAML is composed into nodes first, so that every value keeps the line it came
from; the dataclasses of :mod:`appliance.config.schema` then drive a small
typed conversion. Every problem becomes one :class:`~appliance.errors.ConfigError`
that names the file, the line and the key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import socket
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from appliance.config.schema import INTENT_ACTIONS, STATE_LED_NAMES, Settings, nearest_line
from appliance.errors import ConfigError
from appliance.rules.expr import ExpressionError, parse_condition
from appliance.rules.template import parse_template

SEARCH_PATH = (Path("/etc/appliance/config.yaml"), Path("config.yaml"))
"""Where the config is looked for after ``--config`` and ``$APPLIANCE_CONFIG``."""

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
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(found)) from exc
    return parse_settings(text, str(found), base_dir=found.parent)


def parse_settings(text: str, file: str = "<config>", base_dir: Path = Path()) -> Settings:
    """Validate YAML ``text``.

    ``file`` names it in errors; relative paths resolve from ``base_dir``.
    """
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"invalid YAML: {exc.problem}", file=file,
                          line=mark.line + 1 if mark else 0) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc
    lines: dict[str, int] = {}
    data = {} if node is None else _plain(loader, node, "", lines, file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", file=file, line=1)
    conv = _Converter(file, lines, base_dir)
    settings = conv.build(Settings, data, "")
    return _finish(settings, file, lines)


def _plain(loader: yaml.SafeLoader, node: yaml.Node, key: str, lines: dict[str, int],
           file: str) -> Any:
    """Turn a YAML node into plain Python data, recording each key path's line."""
    lines.setdefault(key, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            name = loader.construct_object(knode)
            if not isinstance(name, str):
                raise ConfigError(f"keys must be strings, got {name!r}", file=file,
                                  line=knode.start_mark.line + 1, key=key or "<top>")
            path = f"{key}.{name}" if key else name
            if name in out:
                raise ConfigError("duplicate key", file=file, line=knode.start_mark.line + 1,
                                  key=path)
            lines[path] = knode.start_mark.line + 1
            out[name] = _plain(loader, vnode, path, lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(loader, item, f"{key}[{i}]", lines, file)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node)


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
            return float(value)
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


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _finish(settings: Settings, file: str, lines: dict[str, int]) -> Settings:
    """Fill derived defaults and check what spans several keys."""
    settings = dataclasses.replace(settings, source=file, lines=lines,
                                   device_id=settings.device_id or socket.gethostname())

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=file, line=settings.line_of(key), key=key)

    if settings.llm.model is None and settings.llm.model_path is None:
        raise fail("llm", "set llm.model (a catalog name) or llm.model_path (a .gguf file)")
    if any(c in settings.base_topic for c in "#+"):
        raise fail("mqtt.base_topic", "must not contain the MQTT wildcards '#' or '+'")
    if "/" in settings.device_id or any(c in settings.device_id for c in "#+"):
        raise fail("device_id", "must not contain '/', '#' or '+'")
    levels = settings.thermal.levels
    for i, (low, high) in enumerate(itertools.pairwise(levels), start=1):
        if high.from_c <= low.from_c:
            raise fail(f"thermal.levels[{i}].from_c",
                       f"levels must rise: {high.from_c} is not above {low.from_c}")
    for i, rule in enumerate(settings.rules):
        try:
            if rule.when is not None:
                parse_condition(rule.when)
        except ExpressionError as exc:
            raise fail(f"rules[{i}].when", str(exc)) from None
        try:
            parse_template(rule.prompt)
        except ExpressionError as exc:
            raise fail(f"rules[{i}].prompt", str(exc)) from None
    for phrase, action in settings.voice.intents.items():
        if action not in INTENT_ACTIONS:
            raise fail(f"voice.intents.{phrase}",
                       f"unknown action {action!r}; expected one of {', '.join(INTENT_ACTIONS)}")
    for name in settings.gpio.state_leds:
        if name not in STATE_LED_NAMES:
            raise fail(f"gpio.state_leds.{name}",
                       f"unknown state; expected one of {', '.join(STATE_LED_NAMES)}")
    if settings.gpio.fan_off_c >= settings.gpio.fan_on_c:
        raise fail("gpio.fan_off_c", f"must be below gpio.fan_on_c ({settings.gpio.fan_on_c})")
    _unique(settings.thermal.levels, "thermal.levels", fail)
    _unique(settings.rules, "rules", fail)
    _unique(settings.gpio.inputs, "gpio.inputs", fail)
    return settings


def _unique(items: tuple[Any, ...], key: str, fail: typing.Callable[[str, str], ConfigError],
            ) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.name in seen:
            raise fail(f"{key}[{i}].name", f"duplicate name {item.name!r}")
        seen.add(item.name)

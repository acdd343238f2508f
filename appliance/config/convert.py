"""Convert plain config data to the schema's dataclasses, by their type hints.

The dataclasses of :mod:`appliance.config.schema` drive a small typed
conversion: unions, literals, tuples, mappings, nested dataclasses, numbers
(finite only), strings and paths (relative ones resolve from the config's
directory). Every problem is a :class:`~appliance.errors.ConfigError` that
names the file, the line and the key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from appliance.config.schema import nearest_line
from appliance.errors import ConfigError

_MISSING = object()


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


class Converter:
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


def positive_number(text: str) -> float | None:
    """``text`` as a positive, finite number (seconds, a speed); ``None`` if it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None

"""Read config YAML into plain data, bounded, keeping the line of every key path.

YAML is composed into nodes first, so that every value keeps the line it came
from. Reading is bounded: nesting (:data:`MAX_DEPTH`) and the number of values
once YAML aliases are expanded (:data:`MAX_VALUES`; a "billion laughs" file is
refused in a tenth of a second). Every problem is one located
:class:`~appliance.errors.ConfigError`.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

from appliance.config.schema import nearest_line
from appliance.errors import ConfigError

MAX_DEPTH = 64
"""How deeply mappings and lists may nest."""
MAX_VALUES = 100_000
"""How many values the file may hold once aliases are expanded."""


def read_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """``text`` as plain data (``{}`` when empty), and the line of each key path in it."""
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
    return data, lines


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

"""Find, parse and validate ``config.yaml`` into :class:`~appliance.config.schema.Settings`.

The file is read bounded (:data:`MAX_FILE_BYTES`), turned into plain data with
the line of every key (:mod:`~appliance.config.yaml_reading`), converted to the
schema's dataclasses (:mod:`~appliance.config.convert`), and checked across
keys (:mod:`~appliance.config.checks`). Every problem becomes one
:class:`~appliance.errors.ConfigError` that names the file, the line and the key path.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from appliance.config.checks import check_settings
from appliance.config.convert import Converter
from appliance.config.schema import Settings
from appliance.config.yaml_reading import read_yaml
from appliance.errors import ConfigError

SEARCH_PATH = (Path("/etc/appliance/config.yaml"), Path("config.yaml"))
"""Where the config is looked for after ``--config`` and ``$APPLIANCE_CONFIG``."""

MAX_FILE_BYTES = 1 << 20
"""The largest config file read (a real one is a few KiB)."""


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
    data, lines = read_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", file=file, line=1)
    conv = Converter(file, lines, base_dir)
    settings = conv.build(Settings, data, "")
    return _finish(settings, file, lines)


def _finish(settings: Settings, file: str, lines: dict[str, int]) -> Settings:
    """Fill derived defaults and check what spans several keys."""
    settings = dataclasses.replace(settings, source=file, lines=lines,
                                   device_id=settings.device_id or socket.gethostname())

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(problem, file=file, line=settings.line_of(key), key=key)

    check_settings(settings, fail)
    return settings

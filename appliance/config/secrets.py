"""The MQTT password: read from ``mqtt.password_file`` or ``$<mqtt.password_env>``.

The file is opened exactly as the service opens it, so ``config check`` run as
the service's user finds what ``run`` would find: a directory, a file that user
may not read, one that is not UTF-8 text or is empty are each a
:class:`~appliance.errors.ConfigError` at the key's line, before anything starts.
"""

from __future__ import annotations

import os

from appliance.config.schema import Settings
from appliance.errors import ConfigError
from appliance.files import open_regular

MAX_PASSWORD_BYTES = 4096
"""A password file larger than this is not a password file (``/dev/zero``, a log)."""


def read_password(settings: Settings) -> str | None:
    """The MQTT password from ``mqtt.password_file`` or ``$<mqtt.password_env>``, if either is set.

    Surrounding whitespace (the file's final newline) is not part of the password.
    """
    mqtt = settings.mqtt
    if mqtt.password_file is not None:
        return _read_file(settings)
    if mqtt.password_env is not None:
        value = os.environ.get(mqtt.password_env)
        if value is None:
            raise _error(settings, "mqtt.password_env",
                         f"names ${mqtt.password_env}, which is not set")
        return value
    return None


def _read_file(settings: Settings) -> str:
    path = settings.mqtt.password_file
    assert path is not None
    try:
        with open_regular(path) as fh:
            raw = fh.read(MAX_PASSWORD_BYTES + 1)
    except OSError as exc:
        who = f" by uid {os.geteuid()}" if isinstance(exc, PermissionError) else ""
        raise _error(settings, "mqtt.password_file",
                     f"{str(path)!r} cannot be read{who}: {exc.strerror}") from None
    if len(raw) > MAX_PASSWORD_BYTES:
        raise _error(settings, "mqtt.password_file",
                     f"{str(path)!r} is larger than {MAX_PASSWORD_BYTES} bytes; "
                     "it should hold only the password")
    try:
        password = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _error(settings, "mqtt.password_file",
                     f"{str(path)!r} is not UTF-8 text") from None
    if not password:
        raise _error(settings, "mqtt.password_file", f"{str(path)!r} is empty")
    return password


def _error(settings: Settings, key: str, problem: str) -> ConfigError:
    return ConfigError(problem, file=settings.source, line=settings.line_of(key), key=key)

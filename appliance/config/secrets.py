"""Secrets (the MQTT password, the escalation API key, the HTTP API's token), from a file or env.

The file is opened exactly as the service opens it, so ``config check`` run as
the service's user finds what ``run`` would find: a directory, a file that user
may not read, one that is not UTF-8 text or is empty are each a
:class:`~appliance.errors.ConfigError` at the key's line, before anything starts.

Every secret read here is registered with :func:`appliance.logs.add_secret` as
it is read, so whichever command read it (``run``, ``doctor``, ``act``...),
no log line of that process shows it: it is ``[redacted]`` wherever it hides.
"""

from __future__ import annotations

import os
import stat

from appliance.config.schema import Settings
from appliance.errors import ConfigError
from appliance.files import open_regular
from appliance.logs import add_secret, get_logger

log = get_logger("config")

MAX_PASSWORD_BYTES = 4096
"""A password file larger than this is not a password file (``/dev/zero``, a log)."""


def read_password(settings: Settings) -> str | None:
    """The MQTT password from ``mqtt.password_file`` or ``$<mqtt.password_env>``, if either is set.

    Surrounding whitespace (the file's final newline) is not part of the password.
    """
    mqtt = settings.mqtt
    return _read(settings, "mqtt.password", mqtt.password_file, mqtt.password_env)


def read_api_key(settings: Settings) -> str | None:
    """The escalation server's API key (``escalation.api_key_file`` or ``_env``), if set."""
    escalation = settings.escalation
    return _read(settings, "escalation.api_key", escalation.api_key_file,
                 escalation.api_key_env)


def read_api_token(settings: Settings) -> str | None:
    """The HTTP API's bearer token (``api.http.token_file``), if one is set."""
    http = settings.api.http
    return _read(settings, "api.http.token", http.token_file if http else None, None)


def _read(settings: Settings, key: str, path: os.PathLike[str] | None,
          env: str | None) -> str | None:
    """The secret from ``path`` or ``$env`` (``None`` if neither is set), never to be logged."""
    if path is not None:
        value = _read_file(settings, f"{key}_file", path)
    elif env is not None:
        value = os.environ.get(env)
        if value is None:
            raise _error(settings, f"{key}_env", f"names ${env}, which is not set")
    else:
        return None
    add_secret(value)
    return value


def _read_file(settings: Settings, key: str, path: os.PathLike[str]) -> str:
    try:
        with open_regular(path) as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = fh.read(MAX_PASSWORD_BYTES + 1)
    except OSError as exc:
        who = f" by uid {os.geteuid()}" if isinstance(exc, PermissionError) else ""
        raise _error(settings, key,
                     f"{str(path)!r} cannot be read{who}: {exc.strerror}") from None
    if len(raw) > MAX_PASSWORD_BYTES:
        what = {"mqtt.password_file": "password", "api.http.token_file": "token"}.get(key, "key")
        raise _error(settings, key, f"{str(path)!r} is larger than {MAX_PASSWORD_BYTES} "
                     f"bytes; it should hold only the {what}")
    try:
        password = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _error(settings, key, f"{str(path)!r} is not UTF-8 text") from None
    if not password:
        raise _error(settings, key, f"{str(path)!r} is empty")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        log.warning("secret_readable_by_all", key=key, path=str(path))
    return password


def _error(settings: Settings, key: str, problem: str) -> ConfigError:
    return ConfigError(problem, file=settings.source, line=settings.line_of(key), key=key)

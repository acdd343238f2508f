"""Structured logging, configured once for the whole process.

structlog and the standard library share one pipeline: our own events and
those of paho, llama.cpp and friends all pass the same processors and come out
as JSON lines (under systemd, or when stderr is not a terminal) or as coloured
console lines (on a terminal). Every event carries a ``component``; a request
id bound with :func:`bind_request` follows a request through every component
that logs while it is handled. A secret registered with :func:`add_secret`
(the MQTT password, the escalation API key, the HTTP token: registered by
:mod:`appliance.config.secrets` as it reads them, in any command) is replaced by
``[redacted]`` in every event, whoever logs it and wherever in the event it
hides (a message, an error text, a traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from typing import Any, TextIO

import structlog

_HANDLER_NAME = "appliance"

# Standard-library loggers that are too chatty at INFO for a device's journal.
_QUIET_LIBRARIES = ("paho", "urllib3", "asyncio")

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4
"""Shorter values are not redacted: replacing every "a" would make the log unreadable."""
_secrets: list[str] = []
"""Longest first: a secret that contains a shorter one is replaced whole, tail and all."""
Sink = Callable[[Mapping[str, Any]], None]
_sinks: list[Sink] = []


def add_secret(value: str | None) -> None:
    """Never log ``value`` from now on: it becomes ``[redacted]`` in every event."""
    if value is not None and len(value) >= MIN_SECRET_CHARS and value not in _secrets:
        _secrets.append(value)
        _secrets.sort(key=len, reverse=True)


def _scrub(value: Any) -> Any:
    """``value`` with every registered secret replaced, looking into dicts and lists."""
    if isinstance(value, str):
        for secret in _secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)  # an exception or another object: rendered as its text anyway
    scrubbed = _scrub(text)
    return value if scrubbed == text else scrubbed


def redact(value: Any) -> Any:
    """``value`` as the log would show it: every registered secret ``[redacted]``."""
    return _scrub(value) if _secrets else value


def _redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    """Replace every registered secret in ``event`` (after tracebacks are rendered)."""
    if not _secrets:
        return event
    return {key: _scrub(value) for key, value in event.items()}


def add_sink(sink: Sink) -> None:
    """Also hand every event to ``sink``, after secrets are redacted (the console's log tail).

    It is called on whichever thread logged, with the handler's lock held: it must be
    quick, must not log, and must copy what it keeps.
    """
    _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    """Stop handing events to ``sink``."""
    if sink in _sinks:
        _sinks.remove(sink)


def _feed_sinks(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    """Hand the redacted event to every sink; a sink that fails is not the log's problem."""
    for sink in tuple(_sinks):
        with suppress(Exception):  # logging its failure here would recurse
            sink(event)
    return event


def _component_from_logger_name(_: Any, __: str, event: MutableMapping[str, Any]) -> Any:
    """Give events from standard-library loggers a component: the logger's name."""
    record = event.get("_record")
    if "component" not in event and record is not None:
        event["component"] = record.name
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up logging for this process; calling it again replaces the earlier setup.

    ``fmt`` is ``json``, ``console`` or ``auto`` (JSON under systemd, when
    ``$JOURNAL_STREAM`` is set, or off a terminal).
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        on_tty = hasattr(stream, "isatty") and stream.isatty()
        fmt = "json" if os.environ.get("JOURNAL_STREAM") or not on_tty else "console"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=True))
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _component_from_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_secrets,
            _feed_sinks,  # after the redaction: a sink never sees a secret
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    logging.captureWarnings(True)  # library warnings (gpiozero's fallbacks) join the pipeline
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> structlog.stdlib.BoundLogger:
    """A logger whose every event names ``component``."""
    # Initial values, not .bind(): binding now would freeze the configuration of import time.
    return structlog.stdlib.get_logger(f"appliance.{component}", component=component)


@contextmanager
def bind_request(request_id: str, **extra: Any) -> Iterator[None]:
    """Bind ``request_id`` (and ``extra``) to every event logged in this context."""
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id, **extra)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)

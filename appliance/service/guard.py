"""One guard around every inbound handler: a bug in one input never stops the next one.

An unexpected exception is logged with its traceback and handed to the
handler's ``on_failure`` (which answers with one ``error`` naming the request,
never the traceback's text), and the caller's loop goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from appliance.logs import get_logger

log = get_logger("guard")

P = ParamSpec("P")
R = TypeVar("R")

INTERNAL_ERROR = "internal error"
"""The public text of an unexpected failure (the details are in the log)."""


def guarded(on_failure: Callable[P, R]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a handler so that an unexpected exception becomes ``on_failure(*same args)``."""

    def wrap(handler: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(handler)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return handler(*args, **kwargs)
            except Exception:
                log.exception("handler_failed", handler=handler.__qualname__)
                return on_failure(*args, **kwargs)
        return run

    return wrap

"""One guard around every inbound handler: a bug in one input never stops the next one.

An unexpected exception is logged once, with its traceback, and the handler's
``on_failure`` answers instead (with one ``error`` naming the request, never
the traceback's text); the caller's loop goes on. The guard is the same for a
plain function (the MQTT intake) and a coroutine function (a Wyoming
connection, an HTTP request), as Home Assistant's ``catch_log_exception`` is:
``on_failure`` has the handler's kind (awaited for a coroutine function), and
receives the handler's own arguments.

What a handler expects (a client's mistake, a lost connection) it catches
itself and answers in its own words; the guard is only for what nobody
expected. ``asyncio.CancelledError`` is no failure: it passes through.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from appliance.logs import get_logger

log = get_logger("guard")

P = ParamSpec("P")
R = TypeVar("R")

INTERNAL_ERROR = "internal error"
"""The public text of an unexpected failure (the details are in the log)."""

Context = Callable[..., Mapping[str, object]]
"""Log fields from the handler's arguments (``peer``, ``path``): never the payload itself."""


def guarded(on_failure: Callable[P, R], *, event: str = "handler_failed",
            context: Context | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a handler so that an unexpected exception becomes ``on_failure(*same args)``.

    ``event`` names the log line; ``context(*same args)`` adds fields to it.
    """

    def wrap(handler: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(handler) != inspect.iscoroutinefunction(on_failure):
            raise TypeError(f"{handler.__qualname__} and {on_failure.__qualname__} must both "
                            "be coroutine functions, or neither")

        def failed(*args: Any, **kwargs: Any) -> None:
            fields = dict(context(*args, **kwargs)) if context is not None else {}
            log.exception(event, handler=handler.__qualname__, **fields)

        if inspect.iscoroutinefunction(handler):
            answer = cast(Callable[P, Awaitable[Any]], on_failure)
            work = cast(Callable[P, Awaitable[Any]], handler)

            @functools.wraps(handler)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    return await work(*args, **kwargs)
                except Exception:
                    failed(*args, **kwargs)
                    return await answer(*args, **kwargs)
            return cast(Callable[P, R], run_async)

        @functools.wraps(handler)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return handler(*args, **kwargs)
            except Exception:
                failed(*args, **kwargs)
                return on_failure(*args, **kwargs)
        return run

    return wrap

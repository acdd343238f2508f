"""Our exceptions have one root, and one guard catches what nobody expected (fast, no processes)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import json
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance import logs
from appliance.errors import ApplianceError
from appliance.service.guard import guarded

PRIVATE_OUTSIDE = {
    "appliance.service.intake._Held":
        "control flow inside Intake: a message whose journal write failed is kept and retried; "
        "raised and caught in intake.py, never seen outside it",
    "appliance.generate.openai_http._Malformed":
        "a malformed upstream stream chunk, caught in openai_http.py and turned into a local "
        "fallback that counts for the breaker; never seen outside it",
    "appliance.download._WriteFailed":
        "tells a local write failure from the network errors around it inside download.py, "
        "which reports it as a DownloadError",
    "appliance.download._TooLong":
        "a server sending more bytes than the file has, caught in download.py and reported "
        "as a DownloadError",
}
"""Private exceptions allowed outside ApplianceError, with why: none escapes its module."""


def _modules() -> list[Any]:
    """Every module of the package that imports here (optional heavy extras may not).

    Walked on disk, not with ``pkgutil``: some folders have no ``__init__.py``
    (namespace packages), and ``pkgutil`` does not look into those.
    """
    root = Path(appliance.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # running it is the CLI, not an import
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        try:
            found.append(importlib.import_module(name))
        except ImportError:  # an optional dependency this machine lacks
            continue
    return found


def test_every_exception_of_ours_is_an_appliance_error() -> None:
    modules = _modules()
    assert len(modules) > 100  # the walk really walked the package
    ours = {f"{module.__name__}.{name}": cls for module in modules
            for name, cls in vars(module).items()
            if inspect.isclass(cls) and issubclass(cls, BaseException)
            and cls.__module__ == module.__name__}
    assert "appliance.actions.executor.ExecutionError" in ours
    outside = sorted(name for name, cls in ours.items()
                     if not issubclass(cls, ApplianceError) and name not in PRIVATE_OUTSIDE)
    assert outside == [], f"exceptions outside ApplianceError: {outside}"
    assert all(name.rsplit(".", 1)[-1].startswith("_") for name in PRIVATE_OUTSIDE)


def test_the_errors_that_were_value_errors_still_are() -> None:
    from appliance.actions.registry import SchemaError, check_schema
    from appliance.rules.expr import ExpressionError, parse_condition

    for error, call in ((ExpressionError, lambda: parse_condition("temperature >")),
                        (SchemaError, lambda: check_schema({"minutes": {"type": "float"}}))):
        with pytest.raises(ValueError) as caught:  # callers that catch ValueError still do
            call()
        assert isinstance(caught.value, error) and isinstance(caught.value, ApplianceError)


# --- the guard ----------------------------------------------------------------------------------

@pytest.fixture
def log_lines() -> io.StringIO:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    return out


def _events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


class Door:
    """A handler owner as the intake, the Wyoming server and the HTTP API are."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []

    def _failed(self, message: str, peer: str) -> str:
        self.failed.append((message, peer))
        return "internal error"

    async def _failed_async(self, message: str, peer: str) -> str:
        await asyncio.sleep(0)
        return self._failed(message, peer)

    def _context(self, _message: str, peer: str) -> dict[str, object]:
        return {"peer": peer}

    @guarded(_failed, event="door_failed", context=_context)
    def handle(self, message: str, peer: str) -> str:
        if message == "bug":
            raise KeyError("the secret traceback")
        return f"ok {message}"

    @guarded(_failed_async, event="door_failed", context=_context)
    async def handle_async(self, message: str, peer: str) -> str:
        await asyncio.sleep(0)
        if message == "bug":
            raise KeyError("the secret traceback")
        if message == "cancel":
            raise asyncio.CancelledError
        return f"ok {message}"


def test_the_guard_answers_a_sync_handlers_bug_once_and_goes_on(log_lines: io.StringIO) -> None:
    door = Door()
    assert door.handle("bug", peer="p1") == "internal error"
    assert door.handle("next", peer="p2") == "ok next"
    assert door.failed == [("bug", "p1")]
    failures = [e for e in _events(log_lines) if e["event"] == "door_failed"]
    assert len(failures) == 1
    assert failures[0]["peer"] == "p1" and failures[0]["handler"] == "Door.handle"
    assert "KeyError" in failures[0]["exception"]  # the traceback, in the log only


def test_the_guard_answers_an_async_handlers_bug_once_and_goes_on(
        log_lines: io.StringIO) -> None:
    door = Door()
    assert inspect.iscoroutinefunction(door.handle_async)

    async def calls() -> list[str]:
        return [await door.handle_async("bug", "p1"), await door.handle_async("next", "p2")]

    assert asyncio.run(calls()) == ["internal error", "ok next"]
    assert door.failed == [("bug", "p1")]
    failures = [e for e in _events(log_lines) if e["event"] == "door_failed"]
    assert len(failures) == 1 and failures[0]["handler"] == "Door.handle_async"
    assert "KeyError" in failures[0]["exception"]


def test_a_cancelled_handler_is_no_failure(log_lines: io.StringIO) -> None:
    door = Door()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(door.handle_async("cancel", "p1"))
    assert door.failed == [] and not _events(log_lines)


def test_the_guard_refuses_an_answer_of_the_other_kind() -> None:
    async def handler() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine functions"):
        guarded(lambda: None)(handler)


def test_the_http_guard_answers_a_bug_in_the_apis_shape(log_lines: io.StringIO) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from appliance.api.http_server import _answer

    async def broken(_request: web.Request) -> web.StreamResponse:
        raise KeyError("the secret traceback")

    async def answers() -> list[Any]:
        return [await _answer(make_mocked_request("GET", path), broken)
                for path in ("/v1/models", "/api/tags")]

    openai, ollama = asyncio.run(answers())
    assert openai.status == ollama.status == 500
    assert json.loads(openai.text)["error"]["message"] == "internal error"
    assert json.loads(ollama.text) == {"error": "internal error"}
    failures = [e for e in _events(log_lines) if e["event"] == "http_handler_failed"]
    assert [e["path"] for e in failures] == ["/v1/models", "/api/tags"]
    assert all("KeyError" in e["exception"] for e in failures)

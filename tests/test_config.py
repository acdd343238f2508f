"""Config: search order, typed settings, and one-line located errors."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.config import load_settings, parse_settings
from appliance.config.loader import MAX_FILE_BYTES
from appliance.config.schema import Settings
from appliance.config.secrets import read_password
from appliance.config.yaml_reading import MAX_VALUES
from appliance.errors import ConfigError
from tests.conftest import ROOT, run_cli


@pytest.mark.parametrize(("text", "message"), [
    ("llm:\n  max_tokens: many\n",
     "c.yaml:2: llm.max_tokens: expected an integer, got 'many'"),
    ("llm:\n  n_ctx: 1024\n  max_token: 3\n",
     "c.yaml:3: llm.max_token: unknown key; did you mean 'max_tokens'?"),
    ("llm:\n  temperature: 9\n",
     "c.yaml:2: llm.temperature: 9.0 is out of range; expected 0.0 to 2.0"),
    ("mqtt:\n  port: yes\n", "c.yaml:2: mqtt.port: expected an integer, got True"),
    ("llm:\n  model_path: /no/such.gguf\n",
     "c.yaml:2: llm.model_path: '/no/such.gguf' does not exist"),
    ("voice:\n  activation: shout\n",
     "c.yaml:2: voice.activation: expected one of button, wake, always, got 'shout'"),
    ("rules:\n  - name: a\n    source: b\n",
     "c.yaml:2: rules[0]: missing required key 'prompt'"),
    ("thermal:\n  levels:\n    - {name: a, from_c: 50, max_tokens: 9}\n"
     "    - {name: b, from_c: 40, max_tokens: 9}\n",
     "c.yaml:4: thermal.levels[1].from_c: levels must rise: 40.0 is not above 50.0"),
    ("mqtt:\n  base_topic: site/#\n",
     "c.yaml:2: mqtt.base_topic: must not contain the MQTT wildcards '#' or '+'"),
    ("llm: [1\n", "c.yaml:2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("llm:\n  seed: 1\nllm:\n  seed: 2\n", "c.yaml:3: llm: duplicate key"),
])
def test_bad_values_name_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "c.yaml")
    assert str(info.value) == message


def test_valid_config_gives_frozen_typed_settings(tmp_path: Path) -> None:
    settings = parse_settings(
        "device_id: kiosk-1\ndata_dir: state\nllm:\n  max_tokens: 64\n  temperature: 1\n"
        "voice:\n  grammar: [stop, go]\n", "c.yaml", base_dir=tmp_path)
    assert settings.llm.max_tokens == 64
    assert settings.llm.temperature == 1.0 and isinstance(settings.llm.temperature, float)
    assert settings.voice.grammar == ("stop", "go")
    assert settings.data_dir == tmp_path / "state"  # relative to the config file
    assert settings.base_topic == "appliance/kiosk-1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.llm.max_tokens = 1  # type: ignore[misc]


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text("device_id: from-env\n")
    local = tmp_path / "config.yaml"
    local.write_text("device_id: from-cwd\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("appliance.config.loader.SEARCH_PATH",
                        (tmp_path / "etc-missing.yaml", Path("config.yaml")))
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
    assert load_settings().device_id == "from-cwd"
    monkeypatch.setenv("APPLIANCE_CONFIG", str(env_file))
    assert load_settings().device_id == "from-env"
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("device_id: explicit\n")
    assert load_settings(explicit).device_id == "explicit"
    with pytest.raises(ConfigError, match="--config names"):
        load_settings(tmp_path / "absent.yaml")


def _schema_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        if not f.compare:
            continue
        keys.add(prefix + f.name)
        inner = f.default if dataclasses.is_dataclass(f.default) else None
        if inner is not None:
            keys |= _schema_keys(type(inner), f"{prefix}{f.name}.")
    return keys


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "config.example.yaml"
    text = example.read_text()
    settings = parse_settings(text, str(example))
    assert settings.llm == Settings().llm  # it shows the defaults
    documented = yaml.safe_load(text)

    def present(key: str) -> bool:
        node = documented
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return part in text  # a commented example line documents it too
            node = node[part]
        return True

    missing = sorted(k for k in _schema_keys(Settings) if not present(k))
    assert not missing, f"config.example.yaml lacks {missing}"


@pytest.mark.slow
def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("llm:\n  temperature: 0\n  bogus: 1\n")
    result = run_cli("--config", str(bad), "config", "check")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"appliance: {bad}:3: llm.bogus: unknown key; expected one of: "
                           "model, model_path, n_ctx, ")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_missing_model_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nllm:\n  model: llama-3.2-3b-instruct-q4_k_m\n")
    result = run_cli("--config", str(cfg), "ask", "hello")
    assert result.returncode == 2
    assert result.stderr.startswith(f"appliance: {cfg}:3: llm.model: ")
    assert "appliance models pull llama-3.2-3b-instruct-q4_k_m" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_config_check_masks_nothing_secret(tmp_path: Path, model_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("hunter2\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"llm:\n  model_path: {model_path}\nmqtt:\n  password_file: {secret}\n")
    result = run_cli("--config", str(cfg), "config", "check")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert yaml.safe_load(result.stdout)["mqtt"]["password_file"] == str(secret)


# "Billion laughs" in 396 bytes: 9 levels of 9 aliases, 9**9 values once expanded.
BILLION_LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True))


@pytest.mark.parametrize("text", [
    BILLION_LAUGHS,
    "a: &a [&b [&c [x, x, x, x], *c, *c, *c, *c], *b, *b, *b, *b]\n"
    + "".join(f"l{i}: &l{i} [*{'a' if i == 0 else f'l{i - 1}'}, "
              f"*{'a' if i == 0 else f'l{i - 1}'}, *{'a' if i == 0 else f'l{i - 1}'}]\n"
              for i in range(12)),
])
def test_alias_bombs_are_refused_at_once(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "c.yaml")
    message = str(info.value)
    assert message.endswith(f"more than {MAX_VALUES} values once YAML aliases are expanded; "
                            "is this an alias bomb?")
    assert message.startswith("c.yaml:") and "\n" not in message


def test_aliases_within_the_budget_still_work() -> None:
    settings = parse_settings("voice:\n  grammar: &words [stop, go]\n"
                              "  block_list: *words\n", "c.yaml")
    assert settings.voice.block_list == ("stop", "go")


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [*a]\n", "c.yaml:1: a: nested more than 64 levels deep (an alias that contains "
                     "itself?)"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n",
     "c.yaml:1: invalid YAML: nested more than 64 levels deep"),
    ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n",
     "c.yaml:1: invalid YAML: nested more than 64 levels deep"),
    ("rules:\n  - name: r\n    source: s\n    prompt: p\n    when: '" + "(" * 3000 + "'\n",
     "c.yaml:5: rules[0].when: the condition nests more than 32 levels deep"),
    ("a: !!python/name:os.system x\n", "c.yaml:1: invalid YAML: could not determine a "
                                       "constructor for the tag "
                                       "'tag:yaml.org,2002:python/name:os.system'"),
    ("llm:\n  seed: " + "9" * 5000 + "\n", "c.yaml:2: llm.seed: cannot read "
                                           "'999999999999999999999999...': Exceeds the limit "
                                           "(4300 digits) for integer string conversion"),
    ("llm:\n  seed: !!timestamp 2024-13-01\n", "c.yaml:2: llm.seed: cannot read '2024-13-01': "
                                                "month must be in 1..12"),
    ("{[1]: 2}\n", "c.yaml:1: <top>: keys must be strings, got a collection"),
    ("a: \x00\n", "c.yaml: invalid YAML: unacceptable character #x0000: special characters are "
                  "not allowed"),
    ("thermal:\n  interval_s: .nan\n",
     "c.yaml:2: thermal.interval_s: expected a finite number, got nan"),
    ("llm:\n  temperature: -.inf\n",
     "c.yaml:2: llm.temperature: expected a finite number, got -inf"),
    ("llm:\n  temperature: 1.0e+999\n",
     "c.yaml:2: llm.temperature: expected a finite number, got inf"),
    ("thermal:\n  interval_s: 1" + "0" * 400 + "\n",
     "c.yaml:2: thermal.interval_s: the number is too large"),
    ("thermal:\n  levels:\n    - {name: a, from_c: 50, max_tokens: 9, pause_s: .inf}\n",
     "c.yaml:3: thermal.levels[0].pause_s: expected a finite number, got inf"),
    ("actions:\n  - name: a\n    args: {x: [1, .nan]}\n",
     "c.yaml:3: actions[0].args.x[1]: expected a finite number, got nan"),
    ("actions:\n  - name: a\n    publish:\n      topic: t\n      payload: {v: {w: -.inf}}\n",
     "c.yaml:5: actions[0].publish.payload.v.w: expected a finite number, got -inf"),
    ("actions:\n  - name: a\n    publish:\n      topic: t\n      payload: {at: 2024-01-02}\n",
     "c.yaml:5: actions[0].publish.payload.at: expected text, a number, true/false, null, a "
     "list or a mapping, got datetime.date(2024, 1, 2)"),
])
def test_hostile_yaml_is_one_located_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "c.yaml")
    assert str(info.value) == message


def _float_keys(cls: type, prefix: str = "") -> Iterator[str]:
    """Every float setting reachable through sections that have defaults."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.compare:
            continue
        if float in (hints[f.name], *typing.get_args(hints[f.name])):
            yield prefix + f.name
        if dataclasses.is_dataclass(f.default):
            yield from _float_keys(type(f.default), f"{prefix}{f.name}.")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "+.INF"])
def test_no_float_setting_takes_nan_or_infinity(value: str) -> None:
    keys = list(_float_keys(Settings))
    assert {"thermal.interval_s", "llm.temperature", "gpio.fan_on_c"} <= set(keys)
    for key in keys:
        *sections, name = key.split(".")
        text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections))
        text += f"{'  ' * len(sections)}{name}: {value}\n"
        with pytest.raises(ConfigError, match=f"^c.yaml:{len(sections) + 1}: {key}: expected a "
                                              "finite number, got"):
            parse_settings(text, "c.yaml")


def test_free_form_values_keep_json_data() -> None:
    settings = parse_settings("actions:\n  - name: a\n    publish:\n      topic: t\n"
                              "      payload: {v: [1, 2.5, true, null, x]}\n"
                              "    args: {level: {type: integer}}\n", "c.yaml")
    (action,) = settings.actions
    assert action.publish is not None
    assert action.publish.payload == {"v": [1, 2.5, True, None, "x"]}
    assert action.args == {"level": {"type": "integer"}}


def test_a_huge_config_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "config.yaml"
    with big.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES * 64)  # sparse: 64 MiB of nothing
    with pytest.raises(ConfigError) as info:
        load_settings(big)
    assert str(info.value) == f"{big}: larger than 1 MiB; this is not a config file"


@pytest.mark.slow
def test_cli_refuses_an_alias_bomb_with_one_line(tmp_path: Path) -> None:
    bomb = tmp_path / "config.yaml"
    bomb.write_text(BILLION_LAUGHS)
    result = run_cli("config", "check", "--config", str(bomb))
    assert result.returncode == 2
    assert result.stderr == (f"appliance: {bomb}:6: f: more than {MAX_VALUES} values once YAML "
                             "aliases are expanded; is this an alias bomb?\n")


def _password_settings(tmp_path: Path, secret: Path | None = None,
                       env: str | None = None) -> Settings:
    mqtt = f"  password_file: {secret}\n" if secret else f"  password_env: {env}\n"
    return parse_settings(f"mqtt:\n  username: u\n{mqtt}", "c.yaml", base_dir=tmp_path)


def test_password_from_a_file_or_the_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("  hunter2\n")
    assert read_password(_password_settings(tmp_path, secret)) == "hunter2"
    monkeypatch.setenv("APPLIANCE_TEST_PASS", "s3cret")
    assert read_password(_password_settings(tmp_path, env="APPLIANCE_TEST_PASS")) == "s3cret"
    assert read_password(parse_settings("", "c.yaml")) is None
    monkeypatch.delenv("APPLIANCE_TEST_PASS")
    with pytest.raises(ConfigError) as info:
        read_password(_password_settings(tmp_path, env="APPLIANCE_TEST_PASS"))
    assert str(info.value) == ("c.yaml:3: mqtt.password_env: names $APPLIANCE_TEST_PASS, "
                               "which is not set")


@pytest.mark.parametrize(("setup", "problem"), [
    ("directory", "cannot be read: Is a directory"),
    ("empty", "is empty"),
    ("blank", "is empty"),
    ("latin1", "is not UTF-8 text"),
    ("huge", "is larger than 4096 bytes; it should hold only the password"),
    ("fifo", "cannot be read: Not a regular file"),
    ("device", "cannot be read: Not a regular file"),
])
def test_unreadable_password_files(tmp_path: Path, setup: str, problem: str) -> None:
    secret = tmp_path / "mqtt.pass"
    if setup == "directory":
        secret.mkdir()
    elif setup == "fifo":
        os.mkfifo(secret)  # no writer: a plain open() would wait forever
    elif setup == "device":
        secret = Path("/dev/zero")
    else:
        secret.write_bytes({"empty": b"", "blank": b" \n\n", "latin1": b"caf\xe9\n",
                            "huge": b"x" * 10_000}[setup])
    with pytest.raises(ConfigError) as info:
        read_password(_password_settings(tmp_path, secret))
    assert str(info.value) == f"c.yaml:3: mqtt.password_file: {str(secret)!r} {problem}"


def _without_read_rights(path: Path) -> list[str]:
    """A command prefix under which ``path`` cannot be read, as by a service user.

    As root, the file is given to nobody and the command runs as root without
    the capabilities that override file permissions (its uid 0 still reaches the
    interpreter under /root); as anyone else, the file is simply made mode 000.
    """
    if os.geteuid() != 0:
        path.chmod(0)
        return []
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root's file capabilities"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


@pytest.mark.slow
def test_check_and_run_refuse_a_password_file_the_service_cannot_read(
        tmp_path: Path, model_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("hunter2\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nllm:\n  model_path: {model_path}\n"
                   f"mqtt:\n  username: u\n  password_file: {secret}\n  port: 9\n")
    ok = run_cli("--config", str(cfg), "config", "check")
    assert ok.returncode == 0, ok.stderr  # readable as we are
    prefix = _without_read_rights(secret)
    for command in (["config", "check"], ["run"]):
        result = subprocess.run([*prefix, sys.executable, "-m", "appliance", "--config",
                                 str(cfg), *command], capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == (f"appliance: {cfg}:6: mqtt.password_file: {str(secret)!r} "
                                 f"cannot be read by uid {os.geteuid()}: Permission denied\n")

"""Config: search order, typed settings, and one-line located errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from appliance.config import load_settings, parse_settings
from appliance.config.schema import Settings
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


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("llm:\n  temperature: 0\n  bogus: 1\n")
    result = run_cli("--config", str(bad), "config", "check")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"appliance: {bad}:3: llm.bogus: unknown key; expected one of: "
                           "model, model_path, n_ctx, ")
    assert "Traceback" not in result.stderr


def test_cli_missing_model_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nllm:\n  model: llama-3.2-3b-instruct-q4_k_m\n")
    result = run_cli("--config", str(cfg), "ask", "hello")
    assert result.returncode == 2
    assert result.stderr.startswith(f"appliance: {cfg}:3: llm.model: ")
    assert "appliance models pull llama-3.2-3b-instruct-q4_k_m" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_check_masks_nothing_secret(tmp_path: Path, model_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("hunter2\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"llm:\n  model_path: {model_path}\nmqtt:\n  password_file: {secret}\n")
    result = run_cli("--config", str(cfg), "config", "check")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert yaml.safe_load(result.stdout)["mqtt"]["password_file"] == str(secret)

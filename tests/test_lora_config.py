"""LoRA adapters in the config: names, uses, and whether a file fits the model (issue 25).

An adapter that does not fit the model is one line at ``appliance config check``,
read from the GGUF headers without loading llama.cpp. The files are written
like ``convert_lora_to_gguf.py`` writes them (:mod:`appliance.bench.lora_files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bench.lora_files import LoraSpec, write_lora
from appliance.config import parse_settings
from appliance.errors import ConfigError, ModelError
from appliance.llm.adapter_files import adapter_for, check_fit, resolve_adapters
from appliance.llm.gguf import check_model_file
from appliance.llm.kv_disk import DiskKvCache
from appliance.llm.kv_state import KvSnapshot
from appliance.llm.types import ChatRequest
from tests.helpers import llm_config, run_cli, smollm2_path, write_config, yaml_text


def _settings(tmp_path: Path, llm: dict[str, Any], rules: list[dict[str, Any]] | None = None,
              ) -> Any:
    config: dict[str, Any] = {"data_dir": tmp_path, "llm": {**llm_config(), **llm}}
    if rules is not None:
        config["rules"] = rules
    return parse_settings(yaml_text(config), "test.yaml")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fitting adapter, one for another architecture, one whose A has a wrong width."""
    root = tmp_path_factory.mktemp("lora")
    base = smollm2_path()
    return {
        "good": write_lora(root / "good.gguf", base),
        "other_arch": write_lora(root / "qwen.gguf", base, LoraSpec(architecture="qwen2")),
        "bad_shape": write_lora(root / "wide.gguf", base, LoraSpec(extra_n_in=64)),
    }


def test_a_fitting_adapter_passes_the_header_check(adapters: dict[str, Path]) -> None:
    check_fit(check_model_file(smollm2_path()), adapters["good"])


@pytest.mark.parametrize(("which", "problem"), [
    ("other_arch", "made for the 'qwen2' architecture, but the model is 'llama'"),
    ("bad_shape", "blk.0.attn_q.weight: lora_a [640, 8] and lora_b [8, 576] do not fit "
                  "the model's [576, 576] (another model, or A/B swapped?)"),
])
def test_an_adapter_that_does_not_fit_is_named(adapters: dict[str, Path], which: str,
                                               problem: str) -> None:
    with pytest.raises(ModelError) as caught:
        check_fit(check_model_file(smollm2_path()), adapters[which])
    assert str(caught.value) == f"{adapters[which]}: {problem}"


def test_a_model_is_not_an_adapter() -> None:
    with pytest.raises(ModelError, match="not a LoRA adapter"):
        check_fit(check_model_file(smollm2_path()), smollm2_path())


@pytest.mark.slow
@pytest.mark.parametrize("which", ["other_arch", "bad_shape"])
def test_config_check_gives_one_line_for_an_adapter_that_does_not_fit(
        tmp_path: Path, adapters: dict[str, Path], which: str) -> None:
    config = write_config(tmp_path / "config.yaml",
                          {"llm": {"adapters": {"plant_care": {"path": adapters[which]}}}})
    done = run_cli("--config", str(config), "config", "check")
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = config.read_text().splitlines().index("    plant_care:") + 2  # the path: line
    assert lines[0].startswith(f"appliance: {config}:{line}: llm.adapters.plant_care.path: "
                               f"{adapters[which]}: "), lines[0]


@pytest.mark.slow
def test_config_check_accepts_a_fitting_adapter(tmp_path: Path,
                                               adapters: dict[str, Path]) -> None:
    config = write_config(tmp_path / "config.yaml", {"llm": {
        "adapters": {"plant_care": {"path": adapters["good"], "scale": 0.5}},
        "adapter_for": {"sensor": "plant_care"}}})
    done = run_cli("--config", str(config), "config", "check")
    assert done.returncode == 0, done.stderr
    assert "plant_care:" in done.stdout


@pytest.mark.parametrize(("llm", "rules", "key", "problem"), [
    ({"adapter_for": {"voice": "nope"}}, None, "llm.adapter_for.voice", "no adapter 'nope'"),
    ({"adapter_for": {"radio": "a"}}, None, "llm.adapter_for.radio", "unknown source"),
    ({}, [{"name": "r", "source": "s", "prompt": "p", "adapter": "nope"}], "rules[0].adapter",
     "no adapter 'nope'"),
    ({"adapters": {"a": {"scale": 1.0}}}, None, "llm.adapters.a", "exactly one of path"),
    ({"adapters": {"a:b": {"model": "x"}}}, None, "llm.adapters.a:b", "plain word"),
])
def test_adapter_names_are_checked(tmp_path: Path, llm: dict[str, Any],
                                   rules: list[dict[str, Any]] | None, key: str,
                                   problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, llm, rules)
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_the_adapter_a_request_uses(tmp_path: Path, adapters: dict[str, Path]) -> None:
    llm = _settings(tmp_path, {"adapters": {"a": {"path": adapters["good"]},
                                            "b": {"path": adapters["good"]}},
                               "adapter_for": {"sensor": "a", "voice": "b"}}).llm
    assert adapter_for(llm, "voice") == "b"
    assert adapter_for(llm, "mqtt") is None
    assert adapter_for(llm, "sensor") == "a"  # a rule without an adapter of its own
    assert adapter_for(llm, "sensor", rule_adapter="b") == "b"
    assert adapter_for(llm, "voice", rule_adapter="b", named="a") == "a"


def test_the_adapter_crosses_the_worker_pipe() -> None:
    request = ChatRequest("hello", adapter="plant_care")
    assert ChatRequest.from_data(request.to_data()) == request


def test_passage_states_on_disk_are_kept_per_adapter(tmp_path: Path) -> None:
    disk = DiskKvCache(tmp_path / "kv", 1 << 20, "model-x")
    tokens = (1, 2, 3)
    disk.save(KvSnapshot(tokens, b"made under a", "lora:a:1.0"))
    assert disk.load(tokens) is None
    assert disk.load(tokens, "lora:b:1.0") is None
    assert disk.load(tokens, "lora:a:1.0") == KvSnapshot(tokens, b"made under a", "lora:a:1.0")
    disk.save(KvSnapshot(tokens, b"base"))
    assert disk.load(tokens) == KvSnapshot(tokens, b"base")


def test_a_catalog_model_that_is_not_a_lora_adapter_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"adapters": {"a": {"model": "smollm2-135m-instruct-q4_1"}}})
    with pytest.raises(ConfigError) as caught:
        resolve_adapters(settings)
    assert caught.value.key == "llm.adapters.a.model"
    assert caught.value.problem == ("'smollm2-135m-instruct-q4_1' is a llm model, "
                                    "not a LoRA adapter")

"""The command line, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli


def _config(tmp_path: Path, model_path: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nllm:\n  model_path: {model_path}\n"
                   "  temperature: 0\n  max_tokens: 32\n"
                   f"thermal:\n  zone_path: {tmp_path / 'temp'}\n"
                   "mqtt:\n  port: 9\n")
    (tmp_path / "temp").write_text("48312\n")
    return cfg


def test_ask_json(tmp_path: Path, model_path: Path) -> None:
    result = run_cli("--config", str(_config(tmp_path, model_path)),
                     "ask", "What is two plus two?", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["tokens"] > 0 and answer["text"]
    assert answer["finish_reason"] in ("stop", "length")
    assert {"text", "tokens", "finish_reason", "ttft_ms", "tokens_per_s", "model"} <= set(answer)


def test_ask_streams_text_and_honours_max_tokens(tmp_path: Path, model_path: Path) -> None:
    result = run_cli("--config", str(_config(tmp_path, model_path)),
                     "ask", "Tell me a story.", "--max-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "[length after 5 tokens]" in result.stderr


def test_ask_rejects_bad_arguments(tmp_path: Path, model_path: Path) -> None:
    cfg = str(_config(tmp_path, model_path))
    empty = run_cli("--config", cfg, "ask", "  ")
    assert empty.returncode == 2 and empty.stderr.strip() == "appliance: ask: the question is empty"
    zero = run_cli("--config", cfg, "ask", "hi", "--max-tokens", "0")
    assert zero.returncode == 2 and "--max-tokens must be at least 1" in zero.stderr
    word = run_cli("--config", cfg, "ask", "hi", "--max-tokens", "many")
    assert word.returncode == 2 and "invalid int value: 'many'" in word.stderr


def test_doctor_reports_each_check(tmp_path: Path, model_path: Path) -> None:
    result = run_cli("--config", str(_config(tmp_path, model_path)), "doctor")
    rows = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()}
    assert rows["config"] == "ok" and rows["model"] == "ok" and rows["memory"] == "ok"
    assert rows["temperature"] == "ok" and "48.3 °C" in result.stdout
    assert rows["broker"] == "fail"  # nothing listens on port 9
    assert result.returncode == 1


def test_config_check_prints_effective_config(tmp_path: Path, model_path: Path) -> None:
    result = run_cli("--config", str(_config(tmp_path, model_path)), "config", "check")
    assert result.returncode == 0, result.stderr
    assert "max_tokens: 32" in result.stdout and f"model: {model_path.stem}" in result.stdout

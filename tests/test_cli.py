"""The command line, run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import write_config

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, model_path: Path) -> Path:
    """``llm.model_path`` on line 3, where the bad-model test expects it."""
    (tmp_path / "temp").write_text("48312\n")
    return write_config(tmp_path / "config.yaml", base={
        "data_dir": tmp_path,
        "llm": {"model_path": model_path, "temperature": 0, "max_tokens": 32, "n_threads": 1},
        "thermal": {"zone_path": tmp_path / "temp"}, "mqtt": {"port": 9}})


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


def test_config_and_log_level_are_taken_after_the_command_too(tmp_path: Path,
                                                              model_path: Path) -> None:
    cfg = str(_config(tmp_path, model_path))
    missing = str(tmp_path / "absent.yaml")
    answer = run_cli("ask", "What is two plus two?", "--max-tokens", "3", "--json",
                     "--config", cfg)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["tokens"] > 0
    later_wins = run_cli("--config", missing, "config", "check", "--config", cfg)
    assert later_wins.returncode == 0, later_wins.stderr
    earlier_kept = run_cli("--config", cfg, "config", "check", "--log-level", "error")
    assert earlier_kept.returncode == 0, earlier_kept.stderr
    refused = run_cli("--config", cfg, "config", "check", "--config", missing)
    assert refused.returncode == 2 and missing in refused.stderr
    quiet = run_cli("ask", "hi", "--max-tokens", "1", "--config", cfg)
    loud = run_cli("ask", "hi", "--max-tokens", "1", "--config", cfg, "--log-level", "debug")
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert "llama" not in quiet.stderr and "llama" in loud.stderr  # llama.cpp's own log, at debug
    bad = run_cli("config", "check", "--log-level", "loud")
    assert bad.returncode == 2 and "invalid choice: 'loud'" in bad.stderr


def _model_copy(tmp_path: Path, model_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.gguf"
    if kind == "truncated":  # the header parses; the last tensor's data is cut short
        with model_path.open("rb") as src:
            path.write_bytes(src.read(model_path.stat().st_size - 4096))
    else:
        path.write_bytes({"empty": b"", "text": b"not a model at all\n"}[kind])
    return path


@pytest.mark.parametrize(("kind", "problem"), [
    ("truncated", "truncated: the tensor data ends at byte {size}, but the file has only "
                  "{cut} bytes"),
    ("empty", "the file is empty, not a GGUF model"),
    ("text", "not a GGUF file (it starts with b'not ', not b'GGUF')"),
])
def test_check_and_run_refuse_the_same_bad_model_files(tmp_path: Path, model_path: Path,
                                                       kind: str, problem: str) -> None:
    bad = _model_copy(tmp_path, model_path, kind)
    cfg = _config(tmp_path, model_path)
    cfg.write_text(cfg.read_text().replace(str(model_path), str(bad)))
    size = model_path.stat().st_size
    expected = (f"appliance: {cfg}:3: llm.model_path: {bad}: "
                f"{problem.format(size=size, cut=size - 4096)}\n")
    for command in (["config", "check"], ["run"]):
        result = run_cli("--config", str(cfg), *command)
        assert (result.returncode, result.stderr) == (2, expected), command

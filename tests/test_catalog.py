"""The model catalog: the shipped one, and every way a site's catalog can be malformed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from appliance.catalog import load_catalog
from appliance.errors import CatalogError
from tests.conftest import ROOT, run_cli
from tests.http_server import Served, serve

SHIPPED = ROOT / "models" / "catalog.yaml"
BODY = os.urandom(200_000)
SHA = hashlib.sha256(BODY).hexdigest()
GOOD = ("models:\n"
        "  tiny:\n"
        "    kind: llm\n"
        "    file: tiny.gguf\n"
        "    url: http://127.0.0.1:9/tiny.gguf\n"
        f"    sha256: {SHA}\n"
        f"    size: {len(BODY)}\n")


def test_the_shipped_catalog_pins_every_download() -> None:
    catalog = load_catalog(SHIPPED)
    downloads = [entry for entry in catalog.values() if entry.url is not None]
    assert {e.name for e in downloads} >= {"llama-3.2-3b-instruct-q4_k_m",
                                           "vosk-model-small-en-us-0.15"}
    for entry in downloads:
        assert entry.sha256 is not None and entry.size is not None, entry.name
    vosk = catalog["vosk-model-small-en-us-0.15"]
    assert vosk.sha256 == "30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498"
    assert vosk.size == 41205931


def _error(tmp_path: Path, text: str | bytes) -> str:
    catalog = tmp_path / "catalog.yaml"
    if isinstance(text, str):
        catalog.write_text(text)
    else:
        catalog.write_bytes(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(catalog)
    message = str(info.value)
    assert message.startswith(f"{catalog}") and "\n" not in message
    return message.removeprefix(str(catalog))


@pytest.mark.parametrize(("text", "expected"), [
    ("models:\n  - tiny\n", ":1: models: expected a mapping of model names to their entries, "
                            "got a list"),
    ("models: {}\n", ":1: models: no models listed"),
    ("models:\n", ":1: models: expected a mapping of model names to their entries, got None"),
    ("- 1\n", ": not a model catalog: expected a mapping with 'models:'"),
    ("", ": not a model catalog"),
    (GOOD + "extra: 1\n", ":8: extra: unknown key; a catalog has only 'models:'"),
    (GOOD.replace(f"size: {len(BODY)}", "size: big"),
     ":7: models.tiny.size: expected a positive whole number, got 'big'"),
    (GOOD.replace(f"size: {len(BODY)}", "size: -5"), ":7: models.tiny.size: expected a positive"),
    (GOOD.replace(f"size: {len(BODY)}", "size: true"), ":7: models.tiny.size: expected a positive"),
    (GOOD.replace("file: tiny.gguf", "file: 12"), ":4: models.tiny.file: expected text, got 12"),
    (GOOD.replace("url: http://127.0.0.1:9/tiny.gguf", "url: 5"),
     ":5: models.tiny.url: expected text, got 5"),
    (GOOD.replace("url: http://127.0.0.1:9/tiny.gguf", "url: ftp://mirror/tiny.gguf"),
     ":5: models.tiny.url: 'ftp://mirror/tiny.gguf' is not an http:// or https:// URL"),
    (GOOD.replace("url: http://127.0.0.1:9/tiny.gguf", "url: http://127.0.0.1:port/x"),
     ":5: models.tiny.url: 'http://127.0.0.1:port/x' is not a valid URL"),
    (GOOD.replace(SHA, SHA[:63]), ":6: models.tiny.sha256: expected 64 hex digits"),
    (GOOD.replace(SHA, SHA[:63] + "g"), ":6: models.tiny.sha256: expected 64 hex digits"),
    (GOOD.replace("    size:", "    sha: 1\n    size:"),
     ":7: models.tiny.sha: unknown field; did you mean 'sha256'?"),
    (GOOD.replace("file: tiny.gguf", "file: ../../etc/cron.d/x"),
     ":4: models.tiny.file: '../../etc/cron.d/x' must be a plain file name"),
    (GOOD.replace("file: tiny.gguf", "file: /etc/cron.d/x"),
     ":4: models.tiny.file: '/etc/cron.d/x' must be a plain file name"),
    (GOOD.replace("file: tiny.gguf", "file: .."), ":4: models.tiny.file: '..' must be a plain"),
    (GOOD.replace("    file: tiny.gguf\n", ""), ":2: models.tiny: 'file:' is missing"),
    (GOOD.replace("kind: llm", "kind: gguf"),
     ":3: models.tiny.kind: expected one of llm, vosk, piper, lora, got 'gguf'"),
    (GOOD.replace("    url: http://127.0.0.1:9/tiny.gguf\n", ""),
     ":2: models.tiny: give either 'url:' (downloaded) or 'package:' (a PyPI package)"),
    (GOOD + "    package: tiny\n    module: tiny\n", ":2: models.tiny: give either"),
    (GOOD.replace("    url: http://127.0.0.1:9/tiny.gguf\n", "    package: tiny\n"),
     ":2: models.tiny: 'package:' and 'module:' go together"),
    (GOOD.replace("    url: http://127.0.0.1:9/tiny.gguf\n", "    package: 'x; rm'\n"),
     ":5: models.tiny.package: 'x; rm' is not a PyPI package name"),
    (GOOD.replace("file: tiny.gguf", 'file: "tiny\\n.gguf"'),
     ":4: models.tiny.file: 'tiny\\n.gguf' has control characters"),
    (GOOD.replace("    url: http://127.0.0.1:9/tiny.gguf\n",
                  "    package: tiny\n    module: tiny\n").replace("tiny.gguf", "../x.gguf"),
     ":4: models.tiny.file: '../x.gguf' must be a path inside the package"),
    ("models:\n  tiny:\n    - kind\n", ":2: models.tiny: expected a mapping of fields, got a list"),
    (GOOD + GOOD.removeprefix("models:\n"), ":8: models.tiny: given twice (first at line 2)"),
    ("models:\n  'bad name':\n    kind: llm\n", ":2: models.bad name: a model name must be"),
    ("models:\n  tiny: [\n", ":3: not valid YAML: expected the node content"),
    ("models: " + "[" * 5000 + "\n", ": nested too deeply to be a model catalog"),
])
def test_a_malformed_catalog_is_one_line_naming_file_line_and_field(
        tmp_path: Path, text: str, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


def test_a_catalog_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    message = _error(tmp_path, GOOD.encode().replace(b"llm", b"ll\xff"))
    assert message == ":3: not UTF-8 text (byte 0xff)"


def test_a_missing_catalog_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the model catalog: No such file"):
        load_catalog(tmp_path / "nowhere.yaml")


def test_an_uppercase_sha256_is_accepted_and_kept_lowercase(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(GOOD.replace(SHA, SHA.upper()))
    assert load_catalog(catalog)["tiny"].sha256 == SHA


def _cli_env(tmp_path: Path, catalog_text: str) -> tuple[Path, dict[str, str]]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nllm:\n  model: tiny\n"
                   "models:\n  allow_unsigned_site_catalog: true\n")  # $APPLIANCE_CATALOG
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(catalog_text)
    return cfg, {"APPLIANCE_CATALOG": str(catalog)}


@pytest.mark.slow
@pytest.mark.parametrize("command", [["config", "check"], ["run"]])
def test_config_check_and_run_report_a_bad_catalog_in_one_line(tmp_path: Path,
                                                               command: list[str]) -> None:
    cfg, env = _cli_env(tmp_path, GOOD.replace(f"size: {len(BODY)}", "size: big"))
    result = run_cli("--config", str(cfg), *command, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"appliance: {cfg}:3: llm.model: {env['APPLIANCE_CATALOG']}:7: "
                             "models.tiny.size: expected a positive whole number, got 'big'\n")


@pytest.mark.slow
@pytest.mark.parametrize("command", [["models", "list"], ["models", "pull", "tiny"],
                                     ["models", "verify"]])
def test_models_commands_report_a_bad_catalog_in_one_line(tmp_path: Path,
                                                          command: list[str]) -> None:
    cfg, env = _cli_env(tmp_path, "models:\n  - tiny\n")
    result = run_cli("--config", str(cfg), *command, env=env)
    assert result.returncode == 1
    assert result.stderr == (f"appliance: {env['APPLIANCE_CATALOG']}:1: models: expected a "
                             "mapping of model names to their entries, got a list\n")


@pytest.mark.slow
def test_a_catalog_file_outside_the_models_dir_is_never_written(tmp_path: Path) -> None:
    with serve(Served(BODY)) as url:
        escape = tmp_path / "escaped.gguf"
        cfg, env = _cli_env(tmp_path, GOOD.replace("file: tiny.gguf", f"file: {escape}")
                            .replace("http://127.0.0.1:9/tiny.gguf", url))
        absolute = run_cli("--config", str(cfg), "models", "pull", "tiny", env=env)
        cfg, env = _cli_env(tmp_path, GOOD.replace("file: tiny.gguf", "file: ../../escaped.gguf")
                            .replace("http://127.0.0.1:9/tiny.gguf", url))
        relative = run_cli("--config", str(cfg), "models", "pull", "tiny", env=env)
    for result in (absolute, relative):
        assert result.returncode == 1 and result.stderr.count("\n") == 1
        assert "models.tiny.file:" in result.stderr and "must be a plain file name" in result.stderr
    assert not escape.exists() and not (tmp_path / "data").exists()


@pytest.mark.slow
def test_pull_with_an_uppercase_catalog_hash_installs_the_right_file(tmp_path: Path) -> None:
    with serve(Served(BODY)) as url:
        cfg, env = _cli_env(tmp_path, GOOD.replace(SHA, SHA.upper())
                            .replace("http://127.0.0.1:9/tiny.gguf", url))
        pulled = run_cli("--config", str(cfg), "models", "pull", "tiny", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert "verified and installed" in pulled.stdout
    assert (tmp_path / "data" / "models" / "tiny.gguf").read_bytes() == BODY


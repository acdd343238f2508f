"""`appliance catalog`: the site side of a signed mirror (keys, catalog, rotation)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from appliance.cli import main
from appliance.trust.repository import SiteRepository


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = cli(capsys, "catalog", "init", tmp_path / "site", "--keys", tmp_path / "keys",
                       "--root-keys", tmp_path / "offline")
    assert code == 0 and "1.root.json -> /etc/appliance/root.json" in out
    return tmp_path / "site"


def test_keys_are_private_files_and_never_overwritten(capsys: pytest.CaptureFixture[str],
                                                      site: Path, tmp_path: Path) -> None:
    for key in (tmp_path / "keys" / "targets.pem", tmp_path / "offline" / "root.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    code, _, err = cli(capsys, "catalog", "init", tmp_path / "again", "--keys",
                       tmp_path / "keys", "--root-keys", tmp_path / "offline")
    assert code == 1 and "a key is already there; not overwriting it" in err
    assert not (tmp_path / "again").exists()


def test_a_piper_voice_is_published_with_its_settings(capsys: pytest.CaptureFixture[str],
                                                      site: Path, tmp_path: Path) -> None:
    voice = tmp_path / "joe.onnx"
    voice.write_bytes(b"onnx" * 100)
    voice.with_name("joe.onnx.json").write_text("{}")
    code, _, err = cli(capsys, "catalog", "add", site, "joe", voice, "--kind", "piper",
                       "--keys", tmp_path / "keys")
    assert code == 0, err
    repo = SiteRepository(site, {})
    assert set(repo.targets().targets) == {"joe.onnx", "joe.onnx.json", "catalog.yaml"}
    entry = yaml.safe_load(repo.target_bytes("catalog.yaml") or b"")["models"]["joe"]
    assert entry["target"] == "joe.onnx" and len(entry["companion_sha256"]) == 64


def test_a_catalog_devices_would_reject_is_never_published(
        capsys: pytest.CaptureFixture[str], site: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"m" * 100)
    code, _, err = cli(capsys, "catalog", "add", site, "bad name", model, "--kind", "llm",
                       "--keys", tmp_path / "keys")
    assert code == 1 and "a model name must be letters" in err
    assert SiteRepository(site, {}).targets().targets == {}


def test_a_key_the_root_does_not_trust_is_refused(capsys: pytest.CaptureFixture[str],
                                                  site: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert cli(capsys, "catalog", "init", other, "--keys", tmp_path / "other-keys",
               "--root-keys", tmp_path / "other-offline")[0] == 0
    code, _, err = cli(capsys, "catalog", "sign", site, "--keys", tmp_path / "other-keys")
    assert code == 1 and "not the key the mirror's root trusts for targets" in err

"""Model downloads from a loopback server: resume, verification, corruption."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from appliance.download import download, is_verified, verify
from appliance.errors import DownloadError
from tests.conftest import run_cli
from tests.http_server import Served, serve

BODY = os.urandom(3 * (1 << 20) + 12345)
SHA = hashlib.sha256(BODY).hexdigest()


def test_interrupted_download_resumes_and_verifies(tmp_path: Path) -> None:
    served = Served(BODY, cut_at=len(BODY) // 2)
    dest = tmp_path / "m.gguf"
    with serve(served) as url:
        with pytest.raises(DownloadError, match="run the same command again to resume"):
            download(url, dest, SHA)
        part = tmp_path / "m.gguf.part"
        assert not dest.exists() and part.stat().st_size == len(BODY) // 2
        download(url, dest, SHA)
    assert served.ranges == [None, f"bytes={len(BODY) // 2}-"]
    assert dest.read_bytes() == BODY and not part.exists()
    assert is_verified(dest, SHA)


def test_corrupted_download_is_kept_aside_and_never_used(tmp_path: Path) -> None:
    corrupted = bytearray(BODY)
    corrupted[1000] ^= 0xFF
    dest = tmp_path / "m.gguf"
    with serve(Served(bytes(corrupted))) as url, pytest.raises(DownloadError) as info:
        download(url, dest, SHA)
    assert "does not match" in str(info.value) and "kept aside" in str(info.value)
    assert not dest.exists()
    assert (tmp_path / "m.gguf.corrupt").read_bytes() == bytes(corrupted)


def test_verify_stamp_goes_stale_when_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(BODY)
    assert verify(f, SHA) and is_verified(f, SHA)
    f.write_bytes(BODY[:-1] + b"x")
    assert not is_verified(f, SHA)
    assert not verify(f, SHA)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="download interrupted"):
        download("http://127.0.0.1:9/nothing", tmp_path / "x", SHA, timeout_s=2)


def test_models_pull_and_verify_cli(tmp_path: Path) -> None:
    served = Served(BODY, cut_at=1 << 20)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")
    with serve(served) as url:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(yaml.safe_dump({"models": {"tiny": {
            "kind": "llm", "file": "tiny.gguf", "url": url, "sha256": SHA,
            "size": len(BODY), "license": "test"}}}))
        env = {"APPLIANCE_CATALOG": str(catalog)}
        first = run_cli("--config", str(cfg), "models", "pull", "tiny", env=env)
        assert first.returncode == 1 and "resume" in first.stderr
        second = run_cli("--config", str(cfg), "models", "pull", "tiny", env=env)
        assert second.returncode == 0, second.stderr
        assert "verified and installed" in second.stdout
        listing = run_cli("--config", str(cfg), "models", "list", env=env)
        assert "tiny" in listing.stdout and "verified" in listing.stdout
        (tmp_path / "data" / "models" / "tiny.gguf").write_bytes(b"tampered")
        check = run_cli("--config", str(cfg), "models", "verify", "tiny", env=env)
        assert check.returncode == 1 and "MISMATCH" in check.stderr

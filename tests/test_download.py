"""Model downloads from a loopback server: resume, verification, corruption."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.download import Progress, download, is_verified, unpack_zip, verify
from appliance.errors import DownloadError
from appliance.ranged_get import Interrupted, Pace
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
    f.write_bytes(BODY[:-1] + bytes([BODY[-1] ^ 1]))  # one byte differs, the size does not
    assert not is_verified(f, SHA)
    assert not verify(f, SHA)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="download interrupted"):
        download("http://127.0.0.1:9/nothing", tmp_path / "x", SHA, timeout_s=2)


@pytest.mark.slow
def test_models_pull_and_verify_cli(tmp_path: Path) -> None:
    served = Served(BODY, cut_at=1 << 20)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n"
                   "models:\n  allow_unsigned_site_catalog: true\n")  # $APPLIANCE_CATALOG
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


# --- a hostile server: each way a link or a mirror can fail gives one line ------------------


def _fails(match: str, *args: object, **kwargs: object) -> str:
    """Run ``download(*args, **kwargs)``, expecting a one-line DownloadError matching ``match``."""
    with pytest.raises(DownloadError, match=match) as info:
        download(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_chunked_body_is_one_line_and_resumes(tmp_path: Path) -> None:
    served = Served(BODY, cut_at=200_000, chunked=True)
    dest, part = tmp_path / "m.gguf", tmp_path / "m.gguf.part"
    with serve(served) as url:
        message = _fails("download interrupted at 200000 bytes", url, dest, SHA)
        assert "cut short" in message and "resume" in message
        assert part.read_bytes() == BODY[:200_000] and not dest.exists()
        download(url, dest, SHA)
    assert served.ranges == [None, "bytes=200000-"]
    assert dest.read_bytes() == BODY and is_verified(dest, SHA)


@pytest.mark.parametrize("length", ["12abc", "-20971520", ""])
def test_invalid_content_length_is_one_line(tmp_path: Path, length: str) -> None:
    dest = tmp_path / "m.gguf"
    with serve(Served(BODY, headers={"Content-Length": length})) as url:
        _fails(f"invalid Content-Length '{length}'", url, dest, SHA)
    assert not dest.exists()


def test_progress_never_shows_a_negative_total() -> None:
    out = io.StringIO()
    Progress("m", stream=out, every_s=0)(1 << 20, -20971520)
    Progress("m", stream=out, every_s=0)(1 << 20, 0)
    assert out.getvalue() == "m: 1.0 MiB\nm: 1.0 MiB\n"


def test_the_pace_ends_only_a_whole_window_under_the_minimum_rate() -> None:
    now = [0.0]
    pace = Pace(min_rate=1024, window_s=60, clock=lambda: now[0])
    now[0] = 59.0
    pace.arrived(10)  # slow so far, but the window is not over
    now[0] = 61.0
    pace.arrived(1 << 20)  # 1 MiB in 61 s: fast enough, and a new window starts
    now[0] = 120.0
    pace.arrived(50_000)  # 59 s into the new window
    now[0] = 122.0
    with pytest.raises(Interrupted, match="under 1024 bytes/s for 60 s"):
        pace.arrived(10)  # 50,010 bytes in 61 s


def test_a_link_that_resets_every_300_kb_still_gets_the_file(tmp_path: Path) -> None:
    served = Served(BODY, reset_every=300_000)
    dest, part = tmp_path / "m.gguf", tmp_path / "m.gguf.part"
    tries = 0
    with serve(served) as url:
        while not dest.exists():
            tries += 1
            assert tries <= len(BODY) // 300_000 + 1
            try:
                download(url, dest, SHA)
            except DownloadError as exc:
                assert "\n" not in str(exc) and "Connection reset" in str(exc)
                assert part.stat().st_size == 300_000 * tries  # every byte that came is kept
    assert tries == len(BODY) // 300_000 + 1
    assert served.ranges == [None] + [f"bytes={300_000 * n}-" for n in range(1, tries)]
    assert dest.read_bytes() == BODY and is_verified(dest, SHA)


def test_a_stalled_server_ends_the_pull_and_keeps_what_came(tmp_path: Path) -> None:
    dest, part = tmp_path / "m.gguf", tmp_path / "m.gguf.part"
    with serve(Served(BODY, stall_at=1000)) as url:
        message = _fails("interrupted at 1000 bytes", url, dest, SHA, timeout_s=0.3)
    assert "no data for 0.3 s" in message and "resume" in message
    assert part.read_bytes() == BODY[:1000] and not dest.exists()


def test_a_trickling_server_ends_the_pull_and_the_pull_resumes(tmp_path: Path) -> None:
    served = Served(BODY, trickle_s=0.05)  # 16 bytes every 50 ms: 320 bytes/s at most
    dest, part = tmp_path / "m.gguf", tmp_path / "m.gguf.part"
    with serve(served) as url:
        message = _fails("under 1024 bytes/s", url, dest, SHA, slow_s=0.4)
        assert "resume" in message
        kept = part.stat().st_size
        assert 0 < kept < len(BODY) and part.read_bytes() == BODY[:kept]
        served.trickle_s = None
        download(url, dest, SHA, slow_s=0.4)
    assert served.ranges == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == BODY


def test_trickled_headers_end_the_pull_too(tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    padding = {"X-Padding": "x" * 400}  # 25 pieces of 16 bytes: over a second of headers
    with serve(Served(BODY, trickle_s=0.05, trickle_head=True, headers=padding)) as url:
        _fails(r"interrupted at 0 bytes \(under 1024 bytes/s for 0.4 s\)", url, dest, SHA,
               slow_s=0.4)
    assert not dest.exists()


def test_a_206_for_another_range_is_not_appended(tmp_path: Path) -> None:
    """The case that installed a corrupt 4,145,728-byte file with --allow-unverified."""
    served = Served(BODY, cut_at=1 << 20)
    dest = tmp_path / "m.gguf"
    with serve(served) as url:
        _fails("resume", url, dest, None, size=len(BODY))
        served.range_reply = "whole"  # 206 with all of it, and a Content-Range saying so
        download(url, dest, None, size=len(BODY))
    assert served.ranges == [None, f"bytes={1 << 20}-", None]  # refused, then started over
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize("content_range", ["bytes 5-99/100", "bytes 1048576-9/*", "bytes x"])
def test_a_206_with_a_wrong_content_range_starts_over(tmp_path: Path, content_range: str) -> None:
    served = Served(BODY, cut_at=1 << 20)
    dest = tmp_path / "m.gguf"
    with serve(served) as url:
        _fails("resume", url, dest, SHA)
        served.headers = {"Content-Range": content_range}
        download(url, dest, SHA)
    assert served.ranges == [None, f"bytes={1 << 20}-", None]
    assert dest.read_bytes() == BODY


def test_a_server_that_always_sends_the_wrong_range_fails_cleanly(tmp_path: Path) -> None:
    served = Served(BODY, cut_at=1 << 20)
    dest, part = tmp_path / "m.gguf", tmp_path / "m.gguf.part"
    with serve(served) as url:
        _fails("resume", url, dest, SHA)
        served.status, served.headers = "206 Partial Content", {"Content-Range": "bytes 5-9/10"}
        _fails("a request for bytes from 0 with Content-Range 'bytes 5-9/10'", url, dest, SHA)
    assert served.ranges == [None, f"bytes={1 << 20}-", None]  # one fresh start, no more
    assert not dest.exists() and not part.exists()


def test_the_final_size_must_be_the_catalogs(tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    with serve(Served(BODY)) as url:
        _fails(f"offers {len(BODY)} bytes but the catalog says {len(BODY) + 1}",
               url, dest, None, size=len(BODY) + 1)
    with serve(Served(BODY, chunked=True)) as url:  # no length up front: counted as it comes
        _fails(f"more than the {len(BODY) - 1} bytes", url, dest, None, size=len(BODY) - 1)
        assert not (tmp_path / "m.gguf.part").exists()
        _fails(f"closed at {len(BODY)} of {len(BODY) + 1} bytes", url, dest, None,
               size=len(BODY) + 1)
    assert not dest.exists()


def test_an_uppercase_sha256_accepts_the_right_file(tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    with serve(Served(BODY)) as url:
        download(url, dest, SHA.upper())
    assert is_verified(dest, SHA) and verify(dest, SHA.upper(), force=True)


def test_a_complete_part_is_verified_without_a_byte_fetched(tmp_path: Path) -> None:
    (tmp_path / "m.gguf.part").write_bytes(BODY)
    served = Served(BODY)
    with serve(served) as url:
        download(url, tmp_path / "m.gguf", SHA, size=len(BODY))  # size known: no request
        assert served.ranges == []
        (tmp_path / "n.gguf.part").write_bytes(BODY)
        download(url, tmp_path / "n.gguf", SHA)  # size unknown: a 416 says it ends there
    assert served.ranges == [f"bytes={len(BODY)}-"]
    assert (tmp_path / "n.gguf").read_bytes() == BODY


def test_a_corrupt_copy_is_removed_once_a_good_one_is_installed(tmp_path: Path) -> None:
    corrupted = bytes([BODY[0] ^ 0xFF]) + BODY[1:]
    dest = tmp_path / "m.gguf"
    with serve(Served(corrupted)) as url:
        _fails("kept aside", url, dest, SHA)
    assert (tmp_path / "m.gguf.corrupt").exists()
    with serve(Served(BODY)) as url:
        download(url, dest, SHA)
    assert dest.read_bytes() == BODY and not (tmp_path / "m.gguf.corrupt").exists()


@pytest.mark.parametrize(("served", "match"), [
    (Served(BODY, redirect="/model"), "HTTP 302 .*infinite loop"),
    (Served(BODY, redirect="file:///etc/passwd"),
     "HTTP 302 .*Redirection to url 'file:///etc/passwd' is not allowed"),
    (Served(BODY, silent=True), "interrupted at 0 bytes .no data for 0.3 s"),
    (Served(b"<html>Sign in to the hotel wifi</html>", headers={
        "Content-Type": "text/html; charset=utf-8"}), "web page .text/html"),
    (Served(BODY, range_reply="ignore"), "kept aside"),  # a wrong file, restarted from 0
])
def test_what_held_up_still_fails_in_one_line(tmp_path: Path, served: Served,
                                              match: str) -> None:
    dest = tmp_path / "m.gguf"
    with serve(served) as url:
        _fails(match, url, dest, hashlib.sha256(b"another file").hexdigest(), timeout_s=0.3)
    assert not dest.exists()


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path: Path) -> None:
    served = Served(BODY, cut_at=1 << 20)
    dest = tmp_path / "m.gguf"
    with serve(served) as url:
        _fails("resume", url, dest, SHA)
        served.range_reply = "ignore"
        download(url, dest, SHA)
    assert served.ranges == [None, f"bytes={1 << 20}-"]
    assert dest.read_bytes() == BODY


@pytest.fixture
def tls_pem(tmp_path: Path) -> Path:
    """A self-signed certificate (and its key) for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so there is no certificate to serve https with")
    pem, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(pem)], capture_output=True, check=True)
    pem.write_text(pem.read_text() + key.read_text())
    return pem


def test_https_is_paced_and_resumed_like_http(tmp_path: Path, tls_pem: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    served = Served(BODY, cut_at=1 << 20, tls_pem=tls_pem)
    dest = tmp_path / "m.gguf"
    with serve(served) as url:
        assert url.startswith("https://")
        _fails("certificate verify failed", url, dest, SHA)
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_pem))  # trust it from now on
        _fails(f"closed at {1 << 20} of {len(BODY)} bytes", url, dest, SHA)
        served.trickle_s = 0.05
        _fails("under 1024 bytes/s", url, dest, SHA, slow_s=0.4)
        kept = (tmp_path / "m.gguf.part").stat().st_size
        served.trickle_s = None
        download(url, dest, SHA)
    assert served.ranges == [None, f"bytes={1 << 20}-", f"bytes={kept}-"]  # no request untrusted
    assert kept > 1 << 20 and dest.read_bytes() == BODY


# --- a full disk: a small tmpfs --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs, so that a pull can fill it (needs root, as CI and this box have)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_no_free_space_for_the_model_is_refused_before_the_pull(small_disk: Path) -> None:
    served = Served(BODY)
    with serve(served) as url:
        message = _fails("not enough free space", url, small_disk / "m.gguf", SHA,
                         size=len(BODY))
    assert "stays free for the journal" in message
    assert served.ranges == [] and list(small_disk.iterdir()) == []


def test_no_free_space_to_unpack_a_zip_is_refused_before_unpacking(small_disk: Path) -> None:
    archive = small_disk / "voice.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("voice/am/final.mdl", bytes(1 << 20))  # 1 MiB of zeros: a tiny zip
    with pytest.raises(DownloadError, match=r"not enough free space for unpacking voice\.zip"):
        unpack_zip(archive, small_disk / "voice", reserve=0)
    assert sorted(p.name for p in small_disk.iterdir()) == ["voice.zip"]


def test_a_disk_that_fills_during_the_pull_is_named_and_the_part_removed(
        small_disk: Path) -> None:
    with serve(Served(BODY)) as url:  # no size known, so nothing to check against up front
        message = _fails("no space left on device", url, small_disk / "m.gguf", SHA,
                         reserve=0)
    assert "resume" not in message and "partial file was removed" in message
    assert list(small_disk.iterdir()) == []

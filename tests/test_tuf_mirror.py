"""A signed site mirror (TUF), made by `appliance catalog` and served over loopback HTTP.

Each test builds a real repository with the CLI, serves its folder from an
in-process HTTP server (with Range support and a connection it can drop), and
runs `appliance models pull | verify` against it as a device would, in-process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from appliance.catalog import resolve_llm
from appliance.cli import main
from appliance.config import load_settings
from appliance.doctor import check_catalog
from appliance.trust import keys
from appliance.trust.clock import ClockMark, signed_at
from appliance.trust.repository import SiteRepository
from appliance.trust.site_catalog import add_model

BODY = os.urandom(40_000)  # the fake model


@dataclass
class Mirror:
    """What the loopback server serves (URL path → bytes) and what it was asked for."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)  # path → close after this byte, once
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def load(self, site: Path) -> None:
        """Serve the folder ``site`` as it is now."""
        self.files = {"/" + p.relative_to(site).as_posix(): p.read_bytes()
                      for p in site.rglob("*") if p.is_file()}


@contextmanager
def serve_mirror() -> Iterator[Mirror]:
    """An HTTP server on 127.0.0.1 for a :class:`Mirror`: 200, 206 from a Range, 404."""
    mirror = Mirror()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            header = self.headers.get("Range")
            mirror.requests.append((self.path, header))
            body = mirror.files.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
            self.send_response(206 if header else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) - start))
            if header:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[start:mirror.cut.pop(self.path, len(body))])
            self.close_connection = True

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Site:
    """A site's mirror folder and its two key folders."""

    path: Path
    keys: Path
    root_keys: Path

    def online(self) -> dict[str, list[CryptoSigner]]:
        return {role: [keys.load(self.keys, role)] for role in keys.ONLINE_ROLES}

    def served(self, name: str) -> str:
        info = SiteRepository(self.path, {}).targets().targets[name]
        return f"/targets/{info.hashes['sha256']}.{name}"


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run the appliance command line in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    """A mirror made by `appliance catalog init` and `add` with one 40 KB model."""
    made = Site(tmp_path / "site", tmp_path / "keys", tmp_path / "offline")
    model = tmp_path / "tiny.gguf"
    model.write_bytes(BODY)
    assert cli(capsys, "catalog", "init", made.path, "--keys", made.keys,
               "--root-keys", made.root_keys)[0] == 0
    assert cli(capsys, "catalog", "add", made.path, "tiny", model, "--kind", "llm",
               "--license", "test", "--keys", made.keys)[0] == 0
    return made


@pytest.fixture
def mirror(site: Site) -> Iterator[Mirror]:
    with serve_mirror() as served:
        served.load(site.path)
        yield served


@pytest.fixture
def device(tmp_path: Path, site: Site, mirror: Mirror) -> Path:
    """A device's config: the mirror, and the site's first root pinned."""
    root = tmp_path / "etc" / "root.json"
    root.parent.mkdir()
    shutil.copy(site.path / "metadata" / "1.root.json", root)
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nllm:\n  model: tiny\nmodels:\n"
                      f"  mirror: {mirror.url}\n  trust_root: {root}\n")
    return config


def refusal(capsys: pytest.CaptureFixture[str], device: Path) -> str:
    """Pull `tiny`, expecting a refusal: its one line, without the `appliance: ` prefix."""
    code, _out, err = cli(capsys, "--config", device, "models", "pull", "tiny")
    assert code == 1, err
    errors = [line for line in err.splitlines() if not line.startswith("tiny: ")]  # progress
    assert len(errors) == 1 and errors[0].startswith("appliance: "), err
    return errors[0].removeprefix("appliance: ")


def installed(device: Path) -> Path:
    return load_settings(device).models_dir / "tiny.gguf"


def test_a_good_pull_installs_the_signed_model(capsys: pytest.CaptureFixture[str],
                                               device: Path, tmp_path: Path) -> None:
    code, out, err = cli(capsys, "--config", device, "models", "pull", "tiny")
    assert code == 0, err
    assert "tiny: signed, verified and installed" in out
    assert installed(device).read_bytes() == BODY
    settings = load_settings(device)
    assert resolve_llm(settings).entry is not None  # `llm.model: tiny` names the signed entry
    code, out, _ = cli(capsys, "--config", device, "models", "verify", "tiny")
    assert code == 0 and "tiny: ok" in out
    timestamp = Metadata.from_file(str(tmp_path / "site" / "metadata" / "timestamp.json"))
    assert ClockMark(tmp_path / "data" / "trust" / "clock").seen() == signed_at(timestamp.signed)


def test_a_tampered_target_of_the_right_length_is_refused(
        capsys: pytest.CaptureFixture[str], site: Site, mirror: Mirror, device: Path) -> None:
    path = site.served("tiny.gguf")
    mirror.files[path] = bytes([mirror.files[path][0] ^ 0xFF]) + mirror.files[path][1:]
    line = refusal(capsys, device)
    assert "targets refused tiny.gguf: hash mismatch" in line
    assert not installed(device).exists()


def test_a_refused_catalog_never_replaces_the_good_one(
        capsys: pytest.CaptureFixture[str], site: Site, mirror: Mirror, device: Path,
        tmp_path: Path) -> None:
    assert cli(capsys, "--config", device, "models", "pull", "tiny")[0] == 0
    kept = (tmp_path / "data" / "trust" / "catalog.yaml").read_bytes()
    other = tmp_path / "other.gguf"
    other.write_bytes(b"x" * 3000)
    add_model(SiteRepository(site.path, site.online()), "other", other, "llm", {})
    mirror.load(site.path)
    path = site.served("catalog.yaml")
    mirror.files[path] = mirror.files[path].replace(b"other", b"evilx")
    assert "targets refused catalog.yaml: hash or length mismatch" in refusal(capsys, device)
    assert (tmp_path / "data" / "trust" / "catalog.yaml").read_bytes() == kept


def test_a_catalog_signed_by_the_wrong_key_is_refused(
        capsys: pytest.CaptureFixture[str], site: Site, mirror: Mirror, device: Path,
        tmp_path: Path) -> None:
    signers = site.online()
    signers["targets"] = [CryptoSigner.generate_ed25519()]  # the snapshot key leaked, not this
    evil = tmp_path / "evil.gguf"
    evil.write_bytes(b"evil" * 100)
    add_model(SiteRepository(site.path, signers), "tiny", evil, "llm", {})
    mirror.load(site.path)
    line = refusal(capsys, device)
    assert "targets refused: bad signature" in line
    assert not installed(device).exists()


def test_metadata_rolled_back_is_refused(capsys: pytest.CaptureFixture[str], site: Site,
                                         mirror: Mirror, device: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-site"
    shutil.copytree(site.path, old)
    assert cli(capsys, "catalog", "sign", site.path, "--keys", site.keys)[0] == 0
    mirror.load(site.path)
    assert cli(capsys, "--config", device, "models", "pull", "tiny")[0] == 0
    mirror.load(old)  # a mirror serving yesterday's state, signed and not yet expired
    assert "timestamp refused: version going back" in refusal(capsys, device)


def test_an_expired_timestamp_is_refused(capsys: pytest.CaptureFixture[str], site: Site,
                                         mirror: Mirror, device: Path) -> None:
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)  # the timestamp lives 7
    SiteRepository(site.path, site.online(), now=ten_days_ago).resign()
    mirror.load(site.path)
    assert "timestamp refused: expired" in refusal(capsys, device)


def test_a_clock_behind_the_newest_time_seen_does_not_revive_metadata(
        capsys: pytest.CaptureFixture[str], device: Path, tmp_path: Path) -> None:
    seen = datetime.now(UTC) + timedelta(days=30)  # the device saw that time; it reboots behind
    ClockMark(tmp_path / "data" / "trust" / "clock").raise_to(seen)
    line = refusal(capsys, device)  # the timestamp expires in 7 days: fresh by the clock alone
    assert "timestamp refused: expired" in line and "the newest time this device has seen" in line


def test_mix_and_match_of_new_snapshot_and_old_targets_is_refused(
        capsys: pytest.CaptureFixture[str], site: Site, mirror: Mirror, device: Path) -> None:
    old_targets = (site.path / "metadata" / "targets.json").read_bytes()
    assert cli(capsys, "catalog", "sign", site.path, "--keys", site.keys)[0] == 0
    mirror.load(site.path)
    version = SiteRepository(site.path, {}).targets().version
    mirror.files[f"/metadata/{version}.targets.json"] = old_targets
    assert "targets refused: version going back" in refusal(capsys, device)


def test_after_rotate_key_devices_follow_the_new_root_and_refuse_the_old_key(
        capsys: pytest.CaptureFixture[str], site: Site, mirror: Mirror, device: Path,
        tmp_path: Path) -> None:
    assert cli(capsys, "--config", device, "models", "pull", "tiny")[0] == 0
    old_root = keys.load(site.root_keys, "root")
    code, out, _ = cli(capsys, "catalog", "rotate-key", site.path, "--keys", site.keys,
                       "--root-keys", site.root_keys)
    assert code == 0 and "root v2" in out
    mirror.load(site.path)
    assert cli(capsys, "--config", device, "models", "verify", "tiny")[0] == 0
    history = tmp_path / "data" / "trust" / "metadata" / "root_history"
    assert (history / "2.root.json").is_file()  # the device follows the rotation
    forged = tmp_path / "forged"
    shutil.copytree(site.path, forged)
    attacker = SiteRepository(forged, {"root": [old_root]})
    with attacker.edit_root() as root:  # root v3, trusting a key of the attacker's
        root.add_key(CryptoSigner.generate_ed25519().public_key, "targets")
    mirror.load(forged)
    assert "root refused: bad signature" in refusal(capsys, device)
    assert cli(capsys, "catalog", "rotate-key", site.path, "--keys", site.keys,
               "--root-keys", site.root_keys, "--role", "targets")[0] == 0
    mirror.load(site.path)  # root v3 signed by the new root key: accepted
    assert cli(capsys, "--config", device, "models", "verify", "tiny")[0] == 0
    assert (history / "3.root.json").is_file()


def test_a_mirror_that_drops_the_connection_halfway_resumes(
        capsys: pytest.CaptureFixture[str], site: Site, mirror: Mirror, device: Path) -> None:
    path = site.served("tiny.gguf")
    mirror.cut[path] = len(BODY) // 2
    code, _out, err = cli(capsys, "--config", device, "models", "pull", "tiny")
    assert code == 1 and "resume" in err.splitlines()[-1]
    part = installed(device).with_name("tiny.gguf.part")
    assert part.stat().st_size == len(BODY) // 2
    assert cli(capsys, "--config", device, "models", "pull", "tiny")[0] == 0
    assert [r for p, r in mirror.requests if p == path] == [None, f"bytes={len(BODY) // 2}-"]
    assert installed(device).read_bytes() == BODY and not part.exists()


def test_verify_offline_uses_the_catalog_verified_before(
        capsys: pytest.CaptureFixture[str], device: Path) -> None:
    assert cli(capsys, "--config", device, "models", "pull", "tiny")[0] == 0
    offline = device.with_name("offline.yaml")
    offline.write_text(device.read_text().replace("mirror: http://127.0.0.1:",
                                                  "mirror: http://127.0.0.1:9/#"))
    code, out, err = cli(capsys, "--config", offline, "models", "verify")
    assert code == 0 and "tiny: ok" in out and "using the catalog verified before" in err


def test_doctor_shows_the_catalog_signing_state(
        capsys: pytest.CaptureFixture[str], device: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = check_catalog(load_settings(device))
    assert before.status == "warn" and "nothing verified yet" in before.detail
    assert cli(capsys, "--config", device, "models", "pull", "tiny")[0] == 0
    after = check_catalog(load_settings(device))
    assert after.status == "ok" and "signed mirror" in after.detail
    assert "root v1, timestamp v2" in after.detail
    unpinned = device.with_name("unpinned.yaml")
    unpinned.write_text(device.read_text().replace("etc/root.json", "etc/none.json"))
    assert check_catalog(load_settings(unpinned)).status == "fail"
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"data_dir: {tmp_path / 'data'}\n")
    assert check_catalog(load_settings(plain)).status == "ok"
    monkeypatch.setenv("APPLIANCE_CATALOG", str(tmp_path / "site-catalog.yaml"))
    assert check_catalog(load_settings(plain)).status == "fail"
    plain.write_text(plain.read_text() + "models:\n  allow_unsigned_site_catalog: true\n")
    loud = check_catalog(load_settings(plain))
    assert loud.status == "warn" and "UNSIGNED site catalog" in loud.detail


def test_an_unknown_target_is_refused(capsys: pytest.CaptureFixture[str], site: Site,
                                      mirror: Mirror, device: Path) -> None:
    repo = SiteRepository(site.path, site.online())
    text = (repo.target_bytes("catalog.yaml") or b"").replace(b"target: tiny.gguf",
                                                               b"target: ghost.gguf")
    repo.put_targets({"catalog.yaml": text})  # signed, but names a file never published
    mirror.load(site.path)
    assert "targets refused ghost.gguf: unknown target" in refusal(capsys, device)


def test_an_unsigned_site_catalog_is_refused_unless_allowed(
        capsys: pytest.CaptureFixture[str], mirror: Mirror, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    mirror.files["/plain/tiny.gguf"] = BODY
    catalog = tmp_path / "site-catalog.yaml"
    catalog.write_text(f"models:\n  tiny:\n    kind: llm\n    file: tiny.gguf\n"
                       f"    url: {mirror.url}plain/tiny.gguf\n    size: {len(BODY)}\n"
                       f"    sha256: {hashlib.sha256(BODY).hexdigest()}\n")
    monkeypatch.setenv("APPLIANCE_CATALOG", str(catalog))
    config = tmp_path / "plain.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    line = refusal(capsys, config)
    assert "is an unsigned site catalog: refused" in line
    assert not installed(config).exists()
    config.write_text(config.read_text() + "models:\n  allow_unsigned_site_catalog: true\n")
    assert cli(capsys, "--config", config, "models", "pull", "tiny")[0] == 0
    assert installed(config).read_bytes() == BODY


def test_a_mirror_without_a_pinned_root_is_refused(capsys: pytest.CaptureFixture[str],
                                                   device: Path) -> None:
    device.write_text(device.read_text().replace("etc/root.json", "etc/absent.json"))
    assert "there is no pinned root at" in refusal(capsys, device)

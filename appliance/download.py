"""Resumable, verified model downloads and hash checks.

A download goes to ``<file>.part`` and resumes from its end with an HTTP
``Range`` request; once complete its sha256 is compared with the catalog's and
only a match is renamed into place, atomically. A mismatch is moved aside to
``<file>.corrupt`` and never used. A verified file gets a small
``<file>.sha256`` stamp (hash, size, mtime) so that later checks need not read
two gigabytes from an SD card again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from appliance.errors import DownloadError

CHUNK = 1 << 20
ProgressFn = Callable[[int, int | None], None]


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_for(path: Path, sha256: str) -> str:
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def is_verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` carries a stamp that matches ``sha256`` and the file as it is now."""
    try:
        return _stamp_path(path).read_text() == _stamp_for(path, sha256)
    except OSError:
        return False


def verify(path: Path, sha256: str, *, force: bool = False) -> bool:
    """Check ``path`` against ``sha256`` (reusing a valid stamp unless ``force``); stamp a match."""
    if not force and is_verified(path, sha256):
        return True
    if sha256_of(path) != sha256:
        return False
    if not is_verified(path, sha256):  # rewrite only a missing or stale stamp
        _write_atomic(_stamp_path(path), _stamp_for(path, sha256))
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Progress:
    """Reports download progress: a bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.label, self.stream, self.every_s = label, stream or sys.stderr, every_s
        self.tty = self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        """Report that ``done`` of ``total`` bytes have arrived."""
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last < (0.2 if self.tty else self.every_s):
            return
        self._last = now
        mib = done / (1 << 20)
        if total:
            pct = 100 * done / total
            if self.tty:
                bar = "#" * int(pct / 4)
                self.stream.write(f"\r{self.label} [{bar:<25}] {pct:5.1f}% {mib:8.1f} MiB")
                if finished:
                    self.stream.write("\n")
            else:
                self.stream.write(f"{self.label}: {mib:.1f} MiB of {total / (1 << 20):.1f} MiB "
                                  f"({pct:.0f}%)\n")
        elif self.tty:
            self.stream.write(f"\r{self.label}: {mib:.1f} MiB")
        else:
            self.stream.write(f"{self.label}: {mib:.1f} MiB\n")
        self.stream.flush()


def download(url: str, dest: Path, sha256: str | None, *, progress: ProgressFn | None = None,
             timeout_s: float = 30.0) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part``, and verify ``sha256``.

    With ``sha256=None`` the file is accepted unverified (the caller decided so).
    Raises :class:`DownloadError` on network failure (the partial file stays for
    the next try) or on a hash mismatch (the file is moved to ``dest.corrupt``).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "appliance-models/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if have and response.status != 206:
                have = 0  # the server ignored Range: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with part.open("ab" if have else "wb") as out:
                done = have
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range beyond the end: the part is already complete
            total = have
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DownloadError(
            f"{url}: download interrupted at {part.stat().st_size if part.exists() else 0} "
            f"bytes ({exc}); run the same command again to resume") from exc
    if total is not None and part.stat().st_size < total:
        raise DownloadError(f"{url}: connection closed at {part.stat().st_size} of {total} "
                            "bytes; run the same command again to resume")
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256:
            corrupt = dest.with_name(dest.name + ".corrupt")
            os.replace(part, corrupt)
            raise DownloadError(
                f"{dest.name}: sha256 {actual} does not match the catalog's {sha256}; "
                f"the file was kept aside as {corrupt} and will not be used")
    os.replace(part, dest)
    if sha256 is not None:
        _write_atomic(_stamp_path(dest), _stamp_for(dest, sha256))
    return dest


def unpack_zip(archive: Path, target: Path) -> Path:
    """Unpack a model zip whose single top folder becomes ``target``; atomic via a temp dir."""
    staging = target.with_name(target.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DownloadError(f"{archive}: unsafe path {member!r} in the archive")
            zf.extractall(staging)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a zip archive ({exc})") from exc
    tops = list(staging.iterdir())
    root = tops[0] if len(tops) == 1 and tops[0].is_dir() else staging
    shutil.rmtree(target, ignore_errors=True)
    os.replace(root, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target

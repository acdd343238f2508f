"""Resumable, verified model downloads and hash checks.

A download goes to ``<file>.part`` and resumes from its end with an HTTP
``Range`` request (:mod:`appliance.ranged_get`), writing bytes as they arrive;
once complete, its size is compared with the catalog's and its sha256 with the
catalog's, and only a match is renamed into place, atomically. A mismatch is
moved aside to ``<file>.corrupt`` and never used (and removed once a good copy is
installed). A verified file gets a small ``<file>.sha256`` stamp (hash, size,
mtime) so that later checks need not read two gigabytes from an SD card again.

Free space is checked before a pull, keeping :data:`RESERVE` bytes free for the
journal that shares the data_dir. If the disk fills anyway, the ``.part`` is
removed rather than kept for a resume: a full data_dir stops the service's
journal, and a model can be fetched again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TextIO

from appliance.errors import DownloadError
from appliance.ranged_get import BadReply, Interrupted, RangeMismatch, Reply, get_from, one_line

CHUNK = 1 << 20
RESERVE = 64 << 20  # left free in the data_dir for the journal and logs
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
    return f"{sha256.lower()} {st.st_size} {st.st_mtime_ns}\n"


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
    if sha256_of(path) != sha256.lower():
        return False
    if not is_verified(path, sha256):  # rewrite only a missing or stale stamp
        _write_atomic(_stamp_path(path), _stamp_for(path, sha256))
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def require_space(directory: Path, needed: int, what: str, reserve: int) -> None:
    """Refuse to start writing ``needed`` bytes that would leave under ``reserve`` free."""
    free = shutil.disk_usage(directory).free
    if free < needed + reserve:
        raise DownloadError(
            f"{directory}: not enough free space for {what}: it needs {_mib(needed)} and "
            f"{_mib(reserve)} stays free for the journal, but only {_mib(free)} is free")


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Progress:
    """Reports download progress: a bar on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.label, self.stream, self.every_s = label, stream or sys.stderr, every_s
        self.tty = self.stream.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        """Report that ``done`` of ``total`` bytes (``None`` or 0: unknown) have arrived."""
        now = time.monotonic()
        total = total if total is not None and total > 0 else None
        finished = total is not None and done >= total
        if not finished and now - self._last < (0.2 if self.tty else self.every_s):
            return
        self._last = now
        mib = done / (1 << 20)
        if total is not None:
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


class HashMismatch(DownloadError):
    """The whole file arrived but its sha256 is not the one asked for; it was set aside."""


class _WriteFailed(Exception):
    """Writing the part failed: a local fault, unlike the network errors around it."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause)
        self.cause = cause


class _TooLong(Exception):
    """The server sent more bytes than the file has (``args[0]``)."""


def _receive(reply: Reply, part: Path, total: int | None, progress: ProgressFn | None) -> None:
    """Write the reply's body into ``part`` (appended from ``reply.start``) as it arrives."""
    try:
        out = part.open("ab" if reply.start else "wb")
    except OSError as exc:
        raise _WriteFailed(exc) from None
    with out:
        done = reply.start
        while block := reply.read():
            if total is not None and done + len(block) > total:
                raise _TooLong(total)
            try:
                out.write(block)
                out.flush()  # on disk as it comes: a dropped link keeps every byte
            except OSError as exc:
                raise _WriteFailed(exc) from None
            done += len(block)
            if progress:
                progress(done, total)


def _fetch(part: Path, have: int, size: int | None, progress: ProgressFn | None,
           get: Callable[[int], Reply]) -> int | None:
    """Bring ``part`` (``have`` bytes now) up to date; the file's full size when it is known."""
    if size is not None and have == size:
        return size  # complete already: the hash decides
    try:
        reply = get(have)
    except RangeMismatch:  # what we hold may not be a prefix of this file: start over, once
        part.unlink()
        reply = get(0)
    with closing(reply):
        if size is not None and reply.total is not None and reply.total != size:
            raise BadReply(f"the server offers {reply.total} bytes but the catalog says {size}; "
                           "not downloading a different file")
        total = size if size is not None else reply.total
        _receive(reply, part, total, progress)
    return total


def download(url: str, dest: Path, sha256: str | None, *, size: int | None = None,
             progress: ProgressFn | None = None, timeout_s: float = 30.0,
             slow_s: float = 60.0, min_rate: int = 1024, reserve: int = RESERVE) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part``; check ``size``, ``sha256``.

    With ``sha256=None`` the file is accepted unverified (the caller decided so),
    but never with a size other than ``size``. The transfer ends when no byte
    comes for ``timeout_s`` or under ``min_rate`` bytes/s come for ``slow_s``.
    Raises :class:`DownloadError`, in one line: after a network failure the
    partial file stays for the next try; a full disk removes it; a hash mismatch
    moves the file to ``dest.corrupt``.
    """
    part = dest.with_name(dest.name + ".part")
    corrupt = dest.with_name(dest.name + ".corrupt")

    def get(offset: int) -> Reply:
        return get_from(url, offset, timeout_s=timeout_s, slow_s=slow_s, min_rate=min_rate)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:  # longer than the file: not a prefix of it
            part.unlink()
            have = 0
        require_space(dest.parent, size - have if size is not None else 0, dest.name, reserve)
        try:
            total = _fetch(part, have, size, progress, get)
        except Interrupted as exc:
            raise DownloadError(
                f"{url}: download interrupted at {_size(part)} bytes ({exc}); "
                "run the same command again to resume") from None
        except (BadReply, RangeMismatch) as exc:
            raise DownloadError(f"{url}: {exc}") from None
        except _TooLong as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: the server sent more than the {exc.args[0]} bytes the "
                                "file has; the partial file was removed") from None
        except _WriteFailed as exc:
            if not _disk_full(exc.cause):
                raise exc.cause from None
            kept = _size(part)
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{dest.parent}: no space left on device after {kept} bytes of {dest.name}; "
                "the partial file was removed; free some space and pull again") from None
        got = part.stat().st_size
        if total is not None and got < total:
            raise DownloadError(f"{url}: connection closed at {got} of {total} bytes; "
                                "run the same command again to resume")
        if sha256 is not None and (actual := sha256_of(part)) != sha256.lower():
            os.replace(part, corrupt)
            raise HashMismatch(
                f"{dest.name}: sha256 {actual} does not match the catalog's {sha256.lower()}; "
                f"the file was kept aside as {corrupt} and will not be used")
        os.replace(part, dest)
        corrupt.unlink(missing_ok=True)
        if sha256 is not None:
            _write_atomic(_stamp_path(dest), _stamp_for(dest, sha256))
        else:
            _stamp_path(dest).unlink(missing_ok=True)
    except OSError as exc:  # the network's errors are caught above: this is the local disk
        raise DownloadError(f"{exc.filename or dest}: {exc.strerror or exc}") from None
    return dest


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def unpack_zip(archive: Path, target: Path, reserve: int = RESERVE) -> Path:
    """Unpack a model zip whose single top folder becomes ``target``; atomic via a temp dir."""
    staging = target.with_name(target.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for name in (m.filename for m in members):
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DownloadError(f"{archive}: unsafe path {name!r} in the archive")
            require_space(target.parent, sum(m.file_size for m in members),
                          f"unpacking {archive.name}", reserve)
            staging.mkdir()
            zf.extractall(staging)
        tops = list(staging.iterdir())
        if not tops:
            raise DownloadError(f"{archive}: the archive is empty")
        root = tops[0] if len(tops) == 1 and tops[0].is_dir() else staging
        shutil.rmtree(target, ignore_errors=True)
        os.replace(root, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError) as exc:
        raise DownloadError(f"{archive}: not a usable zip archive ({one_line(str(exc))})") from None
    except OSError as exc:
        full = " (no space left on device)" if _disk_full(exc) else ""
        raise DownloadError(f"{archive}: cannot unpack into {target.parent}{full}: "
                            f"{exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

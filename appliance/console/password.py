"""The console's password file: one Argon2id hash, made and checked by argon2-cffi.

The file (``api.web.password_file``, else ``<data_dir>/console/password``)
holds a single line such as ``$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>``:
argon2-cffi's :class:`~argon2.PasswordHasher` with its default parameters
(RFC 9106's low-memory profile: 64 MiB, 3 passes), which salts each hash with
16 random bytes. It is written atomically with mode 0600; written by root (the
CLI, install.sh), it keeps the owner of the file it replaces, or takes its
directory's, so that the service user can still read it.

Hashing takes ~50-100 ms of CPU by design: callers on the event loop run these
functions on a thread. Both the service (:mod:`appliance.console.auth`) and
``appliance console password`` use them, so there is one way to read and
write the file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.config.schema_api import WebSettings
from appliance.errors import ApplianceError

MIN_LENGTH = 8
MAX_LENGTH = 1024
"""Longer input is refused before hashing (a password, not a document)."""
MAX_FILE_BYTES = 4096
_HASHER = argon2.PasswordHasher()


class PasswordError(ApplianceError):
    """A password that cannot be set, or a password file that cannot be used."""

    exit_code = 2


def password_path(web: WebSettings | None, data_dir: Path) -> Path:
    """Where the console's password hash lives."""
    if web is not None and web.password_file is not None:
        return web.password_file
    return data_dir / "console" / "password"


def check_new(password: str) -> None:
    """Refuse a password too short or too long to set, in one line."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the console password must have at least {MIN_LENGTH} "
                            f"characters (got {len(password)})")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"the console password must have at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """A new salted Argon2id hash of ``password`` (CPU for ~0.1 s: not on the loop)."""
    return _HASHER.hash(password)


def matches(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time inside)."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's defaults."""
    return _HASHER.check_needs_rehash(stored)


def check_hash(text: str, path: Path) -> str:
    """``text`` if it is an Argon2id hash, else a :class:`PasswordError` naming ``path``."""
    try:
        kind = argon2.extract_parameters(text).type
    except InvalidHashError:
        kind = None
    if kind is not argon2.Type.ID:
        raise PasswordError(f"{path}: not an Argon2id password hash; set the password again "
                            "with `appliance console password`")
    return text


def read_hash(path: Path) -> str | None:
    """The hash in ``path``; ``None`` when there is no file; a bad file is a PasswordError."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PasswordError(f"{path}: cannot read the console password file: "
                            f"{exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PasswordError(f"{path}: too large for a password hash; set the password again "
                            "with `appliance console password`")
    return check_hash(raw.decode("utf-8", "replace").strip(), path)


def write_hash(path: Path, stored: str) -> None:
    """Replace ``path`` with ``stored`` atomically, mode 0600."""
    try:
        _write(path, stored)
    except OSError as exc:
        raise PasswordError(f"{path}: cannot write the console password file: "
                            f"{exc.strerror or exc}") from None


def _write(path: Path, stored: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, mode=0o700)
        _own_like(parent, parent.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(stored + "\n")
            out.flush()
            os.fsync(out.fileno())
        _own_like(tmp, path if path.exists() else parent)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable (not on every file system)
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _own_like(path: Path, model: Path) -> None:
    """Run as root, give ``path`` the owner of ``model`` (the service user must read it)."""
    if os.geteuid() != 0:
        return
    found = model.stat()
    os.chown(path, found.st_uid, found.st_gid)

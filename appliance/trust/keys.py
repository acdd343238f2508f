"""Signing keys in files: one Ed25519 key per role, as PEM (PKCS#8) readable by root only.

The site keeps two folders apart:

- the **online keys** (``targets.pem``, ``snapshot.pem``, ``timestamp.pem``),
  used by ``appliance catalog add`` and ``sign`` on the machine that publishes;
- the **root keys** (``root.pem``), used only by ``init`` and ``rotate-key``,
  and otherwise kept offline (a USB stick in a drawer). Whoever holds a root key
  decides which keys every device trusts.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from appliance.errors import TrustError
from appliance.trust import ONLINE_ROLES

__all__ = ["ONLINE_ROLES", "generate", "key_path", "load"]


def key_path(keys: Path, role: str) -> Path:
    """The file holding ``role``'s private key in the folder ``keys``."""
    return keys / f"{role}.pem"


def generate(keys: Path, role: str) -> CryptoSigner:
    """A new Ed25519 key for ``role``, written to ``keys`` (mode 0600), replacing any old one."""
    signer = CryptoSigner.generate_ed25519()
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_path(keys, role)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_bytes)
    os.replace(tmp, path)
    return signer


def load(keys: Path, role: str) -> CryptoSigner:
    """``role``'s signer from ``keys``; a missing or unreadable file is one line."""
    path = key_path(keys, role)
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise TrustError(f"{path}: cannot read the {role} key: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise TrustError(f"{path}: not a PEM private key ({exc})") from None
    return CryptoSigner(private)

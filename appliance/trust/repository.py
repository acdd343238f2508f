"""The site side: a signed mirror in a folder that any web server can serve.

Layout (``appliance catalog init SITE``)::

    SITE/metadata/1.root.json, 2.root.json ...   every root version (devices walk them)
    SITE/metadata/timestamp.json                 short-lived: re-sign it often
    SITE/metadata/N.snapshot.json, N.targets.json
    SITE/targets/<sha256>.<name>                 the catalog and every model file

Consistent snapshots: every file a device fetches after the timestamp is named
by its version or hash, so a device that reads while the site publishes never
mixes two states. The unversioned ``root.json``, ``snapshot.json`` and
``targets.json`` are the site's own pointers to the newest versions.

Metadata is built with python-tuf's ``tuf.api.metadata`` classes and its
``tuf.repository.Repository`` helpers (``edit``, ``do_snapshot``,
``do_timestamp``), signed by securesystemslib signers (:mod:`.keys`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from appliance.errors import TrustError
from appliance.trust.clock import SIGNED_AT

LIFETIMES = {
    "root": timedelta(days=365),
    "targets": timedelta(days=365),
    "snapshot": timedelta(days=30),
    "timestamp": timedelta(days=7),  # re-sign daily from cron: `appliance catalog sign`
}


class SiteRepository(Repository):
    """A mirror folder, signed with ``signers`` (role → signers) as of ``now``."""

    def __init__(self, site: Path, signers: Mapping[str, Sequence[Signer]], *,
                 now: datetime | None = None,
                 lifetimes: Mapping[str, timedelta] = LIFETIMES) -> None:
        self.site = site
        self.metadata_dir = site / "metadata"
        self.targets_dir = site / "targets"
        self.signers = {role: list(s) for role, s in signers.items()}
        self.now = (now or datetime.now(UTC)).replace(microsecond=0)
        self.lifetimes = lifetimes

    @classmethod
    def create(cls, site: Path, signers: Mapping[str, Signer], *,
               now: datetime | None = None) -> SiteRepository:
        """A new mirror in ``site`` trusting one key per role (version 1 of every role)."""
        if (site / "metadata").exists():
            raise TrustError(f"{site}: already a signed mirror (it has metadata/)")
        repo = cls(site, {role: [signer] for role, signer in signers.items()}, now=now)
        root = Root(consistent_snapshot=True)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        repo.metadata_dir.mkdir(parents=True)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        for signed in (root, Targets(), Snapshot(), Timestamp()):
            repo._write(Metadata(signed))
        return repo

    # --- what tuf.repository.Repository needs -------------------------------------------

    def open(self, role: str) -> Metadata:
        """The newest metadata of ``role`` as the site last wrote it."""
        path = self.metadata_dir / f"{role}.json"
        if not path.is_file():
            raise TrustError(f"{self.site}: not a signed mirror (no {path}); "
                             "run: appliance catalog init")
        return Metadata.from_file(str(path))

    def close(self, role: str, md: Metadata) -> None:
        """Store the next version of ``role``, re-signed and with a fresh expiry."""
        md.signed.version += 1
        self._write(md)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        """The targets version that the next snapshot must name."""
        return {"targets.json": MetaFile(version=self.targets().version)}

    @property
    def snapshot_info(self) -> MetaFile:
        """The snapshot version that the next timestamp must name."""
        return MetaFile(version=self.snapshot().version)

    # --- writing ------------------------------------------------------------------------

    def _write(self, md: Metadata) -> None:
        role = md.signed.type
        md.signed.expires = self.now + self.lifetimes[role]
        if role == Timestamp.type:
            md.signed.unrecognized_fields[SIGNED_AT] = self.now.isoformat()
        md.signatures.clear()
        signers = self.signers.get(role, [])
        if not signers:
            raise TrustError(f"{self.site}: no key to sign {role} with")
        for signer in signers:
            md.sign(signer, append=True)
        data = md.to_bytes(JSONSerializer(compact=False))
        names = [f"{role}.json"]
        if role != Timestamp.type:
            names.append(f"{md.signed.version}.{role}.json")
        for name in names:
            _write_atomic(self.metadata_dir / name, data)

    def target_bytes(self, name: str) -> bytes | None:
        """The content of target ``name`` as published, or ``None`` if there is none."""
        info = self.targets().targets.get(name)
        if info is None:
            return None
        return (self.targets_dir / f"{info.hashes['sha256']}.{name}").read_bytes()

    def put_targets(self, files: Mapping[str, Path | bytes]) -> None:
        """Publish ``files`` (target name → a local file or its bytes) in one targets version.

        Old target files stay, so that a device reading the previous snapshot can
        still finish; then snapshot and timestamp are signed anew.
        """
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        with self.edit_targets() as targets:
            for name, source in files.items():
                if isinstance(source, bytes):
                    info = TargetFile.from_data(name, source, ["sha256"])
                else:
                    info = TargetFile.from_file(name, str(source), ["sha256"])
                served = self.targets_dir / f"{info.hashes['sha256']}.{name}"
                if not served.exists():
                    tmp = served.with_name(served.name + ".tmp")
                    if isinstance(source, bytes):
                        tmp.write_bytes(source)
                    else:
                        shutil.copyfile(source, tmp)
                    os.replace(tmp, served)
                targets.targets[name] = info
        self.publish()

    def publish(self, force: bool = False) -> None:
        """Sign a new snapshot (if targets changed, or ``force``) and a new timestamp."""
        self.do_snapshot(force=force)
        self.do_timestamp(force=True)

    def resign(self) -> None:
        """New versions of targets, snapshot and timestamp with fresh expiry dates."""
        with self.edit_targets():
            pass
        self.publish(force=True)

    def rotate(self, role: str, new: Signer) -> None:
        """Trust ``new`` instead of ``role``'s current keys: a new root version, then re-sign.

        For ``role == "root"`` the new root must be signed by the old root key and
        the new one, so that devices (which trust the old) can follow to it; set
        ``signers["root"]`` to both before calling.
        """
        with self.edit_root() as root:
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(new.public_key, role)
        self.signers[role] = [new]
        self.resign()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

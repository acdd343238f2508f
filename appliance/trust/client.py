"""The device side: a site mirror's catalog and files, trusted only through TUF.

:class:`SignedMirror` starts from the root file pinned on the device
(``models.trust_root``) and runs python-tuf's ``Updater`` against the mirror
(``models.mirror``): root → timestamp → snapshot → targets, each signed by the
keys the root names, none going back in version, none expired, each snapshot
and targets file the one the role above it signed for. Its state lives in
``<data_dir>/trust/``: ``metadata/`` (the newest trusted metadata, which is what
stops a rollback), ``catalog.yaml`` (the last verified catalog) and ``clock``
(see :mod:`.clock`).

The catalog is the target ``catalog.yaml``; every file it names is a target
too. A refused file never replaces a good one: the catalog is written to a
temporary file only after python-tuf has checked it, then renamed; a model goes
to ``<file>.part`` and is renamed only once its length and sha256 are the signed
ones (:func:`appliance.download.download`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater

from appliance.catalog import trusted_catalog_path
from appliance.download import HashMismatch, ProgressFn, download
from appliance.errors import DownloadError, TrustError
from appliance.ranged_get import one_line
from appliance.trust.clock import ClockMark, clock_synchronized, signed_at
from appliance.trust.fetcher import MirrorFetcher
from appliance.trust.refusal import refused, target_refused

CATALOG_TARGET = "catalog.yaml"
_TOP_ROLES = ("root", "timestamp", "snapshot", "targets")
_FAILURES = (tuf_errors.RepositoryError, tuf_errors.DownloadError, DownloadError,
             DeserializationError, ValueError)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SignedMirror:
    """One site mirror as this device trusts it."""

    def __init__(self, mirror: str, root: Path, data_dir: Path, *,
                 now: Callable[[], datetime] = _utcnow,
                 synchronized: Callable[[], bool] = clock_synchronized) -> None:
        self.mirror = mirror.rstrip("/") + "/"
        self.root = root
        self.trust_dir = data_dir / "trust"
        self.metadata_dir = self.trust_dir / "metadata"
        self.catalog_path = trusted_catalog_path(data_dir)
        self.mark = ClockMark(self.trust_dir / "clock")
        self.fetcher = MirrorFetcher()
        self._now, self._synchronized = now, synchronized
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Bring the trusted metadata up to date from the mirror, or refuse in one line."""
        try:
            bootstrap = self.root.read_bytes()
        except OSError as exc:
            raise TrustError(f"models.trust_root: cannot read the pinned root {self.root}: "
                             f"{exc.strerror or exc}") from None
        try:
            self.metadata_dir.mkdir(parents=True, exist_ok=True)
            updater = Updater(str(self.metadata_dir), self.mirror + "metadata/",
                              target_base_url=self.mirror + "targets/", fetcher=self.fetcher,
                              bootstrap=bootstrap)
        except (*_FAILURES, OSError) as exc:
            raise TrustError(f"models.trust_root: {self.root} is not a usable TUF root "
                             f"({one_line(str(exc)) or type(exc).__name__})") from None
        try:
            updater.refresh()
        except _FAILURES as exc:
            raise refused(self.mirror, exc, self.fetcher.last_role) from None
        self._check_expiry()
        self._updater = updater

    def _trusted(self, role: str) -> Metadata:
        return Metadata.from_file(str(self.metadata_dir / f"{role}.json"))

    def _check_expiry(self) -> None:
        """Refuse metadata that expired before the newest time this device has seen.

        python-tuf judged expiry by the clock; a clock that is behind (a Pi
        booted without its RTC) is caught here, against :class:`.ClockMark`.
        Once all is well, the mark moves up to what this refresh has shown.
        """
        now = self._now()
        reference = self.mark.reference(now)
        roles = {role: self._trusted(role).signed for role in _TOP_ROLES}
        for role, signed in roles.items():
            if signed.is_expired(reference):
                raise TrustError(
                    f"site mirror {self.mirror}: {role} refused: expired (at "
                    f"{signed.expires:%Y-%m-%d %H:%M} UTC, before {reference:%Y-%m-%d %H:%M} "
                    f"UTC, the newest time this device has seen; its clock says "
                    f"{now:%Y-%m-%d %H:%M})")
        timestamp = roles["timestamp"]
        if isinstance(timestamp, Timestamp) and (when := signed_at(timestamp)) is not None:
            self.mark.raise_to(when)
        if self._synchronized():
            self.mark.raise_to(now)

    def _target_info(self, name: str) -> TargetFile:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        try:
            info = self._updater.get_targetinfo(name)
        except _FAILURES as exc:
            raise refused(self.mirror, exc, self.fetcher.last_role) from None
        if info is None:
            raise target_refused(self.mirror, name,
                                 "unknown target (not in the signed targets metadata)")
        if "sha256" not in info.hashes:
            raise target_refused(self.mirror, name, "the signed targets metadata has no sha256")
        return info

    def _url(self, info: TargetFile) -> str:
        """Where the mirror serves a target: ``<sha256>.<name>`` with consistent snapshots."""
        root = self._trusted("root").signed
        assert isinstance(root, Root)
        name = f"{info.hashes['sha256']}.{info.path}" if root.consistent_snapshot else info.path
        return f"{self.mirror}targets/{name}"

    def fetch_catalog(self) -> Path:
        """Download and check the catalog target; only a good one replaces the last good one."""
        info = self._target_info(CATALOG_TARGET)
        assert self._updater is not None
        tmp = self.catalog_path.with_name(self.catalog_path.name + ".tmp")
        try:
            self._updater.download_target(info, str(tmp))
        except (tuf_errors.LengthOrHashMismatchError,
                tuf_errors.DownloadLengthMismatchError) as exc:
            raise target_refused(self.mirror, CATALOG_TARGET,
                                 f"hash or length mismatch ({one_line(str(exc))})") from None
        except _FAILURES as exc:
            raise refused(self.mirror, exc, None) from None
        os.replace(tmp, self.catalog_path)
        return self.catalog_path

    def pull(self, name: str, dest: Path, sha256: str | None,
             progress: ProgressFn | None = None) -> Path:
        """Download target ``name`` to ``dest`` (resumable), refused unless it is the signed one.

        ``sha256`` is the catalog's; it must agree with the signed targets metadata.
        """
        info = self._target_info(name)
        signed = info.hashes["sha256"].lower()
        if sha256 is not None and sha256.lower() != signed:
            raise target_refused(self.mirror, name, "the catalog's sha256 is not the one the "
                                 "targets metadata signs")
        try:
            return download(self._url(info), dest, signed, size=info.length, progress=progress)
        except HashMismatch as exc:
            raise target_refused(self.mirror, name, f"hash mismatch ({exc})") from None

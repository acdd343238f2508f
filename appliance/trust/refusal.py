"""Every refusal as one line naming the TUF role and the reason.

python-tuf raises a handful of exception types whose messages name the role
only sometimes ("timestamp.json is expired", "snapshot was signed by 0/1 keys",
"Expected snapshot version 3, got 2"). :func:`refused` turns each into a
:class:`~appliance.errors.TrustError` of one line::

    site mirror http://mirror.lan/appliance/: targets refused: bad signature (...)

The role is the one the message names, else the one the fetcher fetched last.
"""

from __future__ import annotations

import re

from tuf.api import exceptions as tuf_errors

from appliance.errors import ApplianceError, DownloadError, TrustError
from appliance.ranged_get import one_line

_NAMED = re.compile(r"\b(root|timestamp|snapshot|targets)\b")

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (tuf_errors.UnsignedMetadataError, "bad signature"),
    (tuf_errors.BadVersionNumberError, "version going back"),
    (tuf_errors.ExpiredMetadataError, "expired"),
    (tuf_errors.LengthOrHashMismatchError, "hash or length mismatch"),
    (tuf_errors.DownloadLengthMismatchError, "hash or length mismatch"),
)


def reason_of(exc: Exception) -> str:
    """The short reason for a python-tuf exception."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, tuf_errors.RepositoryError):
        return "invalid metadata"
    return "cannot fetch"


def refused(mirror: str, exc: Exception, last_role: str | None) -> ApplianceError:
    """The one-line error for ``exc``, raised while trusting ``mirror``.

    Our own download errors (the mirror unreachable, a reply that is not a file)
    keep their class and text, prefixed with the mirror: they are not refusals.
    """
    detail = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, ApplianceError):
        return type(exc)(f"site mirror {mirror}: {detail}") if isinstance(
            exc, DownloadError) else exc
    if isinstance(exc, tuf_errors.DownloadError) and not isinstance(
            exc, tuf_errors.DownloadLengthMismatchError):
        cause = exc.__cause__
        detail = one_line(str(cause)) if cause is not None else detail
        return DownloadError(f"site mirror {mirror}: {last_role or 'metadata'}: {detail}")
    named = _NAMED.search(detail)
    role = named[1] if named else last_role or "metadata"
    return TrustError(f"site mirror {mirror}: {role} refused: {reason_of(exc)} ({detail})")


def target_refused(mirror: str, target: str, reason: str) -> TrustError:
    """A refused target file, named as the targets role's."""
    return TrustError(f"site mirror {mirror}: targets refused {target}: {reason}")

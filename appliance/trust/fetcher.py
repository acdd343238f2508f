"""TUF's downloads over our own HTTP code (:mod:`appliance.ranged_get`).

python-tuf asks a *fetcher* for the bytes of each metadata file and of the
catalog; it bounds their length and checks them itself. Ours uses the same
paced GET as model downloads (a deadline per ``recv``, a minimum rate, strict
headers), and remembers which role it fetched last, so that a refusal can name
the role even when python-tuf's own message does not.

Model files do not come through here: they are large, so they are fetched with
:func:`appliance.download.download` (resumable, into ``.part``) against the
length and sha256 that the signed targets metadata gives.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from appliance.ranged_get import BadReply, get_from

_ROLE = re.compile(r"/metadata/(?:[0-9]+\.)?(root|timestamp|snapshot|targets)\.json$")


class MirrorFetcher(FetcherInterface):
    """Fetches whole files from a mirror; HTTP refusals become TUF's ``DownloadHTTPError``."""

    def __init__(self, timeout_s: float = 30.0, slow_s: float = 60.0,
                 min_rate: int = 1024) -> None:
        self.timeout_s, self.slow_s, self.min_rate = timeout_s, slow_s, min_rate
        self.last_role: str | None = None  # the metadata role fetched last, if any

    def _fetch(self, url: str) -> Iterator[bytes]:
        match = _ROLE.search(url)
        self.last_role = match[1] if match else None
        try:
            reply = get_from(url, 0, timeout_s=self.timeout_s, slow_s=self.slow_s,
                             min_rate=self.min_rate)
        except BadReply as exc:
            if exc.status is not None:  # 404 ends python-tuf's search for newer roots
                raise DownloadHTTPError(str(exc), exc.status) from None
            raise

        def chunks() -> Iterator[bytes]:
            with closing(reply):
                while block := reply.read():
                    yield block
        return chunks()

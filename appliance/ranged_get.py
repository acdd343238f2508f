"""One HTTP GET of a file from a byte offset, with a progress deadline and checked headers.

urllib does the protocol work (redirects, proxies, TLS). On top of it:

- every ``recv`` of the connection, headers included, feeds a :class:`Pace`, which
  ends the transfer when the server sends under ``min_rate`` bytes a second over a
  whole window; a ``recv`` that waits ``timeout_s`` without a byte ends it too;
- the body is read with ``read1``, so a caller gets bytes as they arrive and can
  write them at once (a ``read(1 MiB)`` loses what it had when the link drops);
- ``Content-Length`` and ``Content-Range`` are parsed strictly, and a 206 that is
  not the range asked for is refused rather than appended.

Failures are :class:`DownloadError` subclasses with one-line reasons; the caller
adds what was downloaded and what to do.
"""

from __future__ import annotations

import functools
import http.client
import io
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.errors import DownloadError

BLOCK = 1 << 16
_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)")
_UNSATISFIED = re.compile(r"bytes \*/([0-9]+)")


class Interrupted(DownloadError):
    """The link failed or slowed to a trickle; what arrived is good and can be resumed."""


class BadReply(DownloadError):
    """The server refused or answered something that is not the file asked for.

    ``status`` is the HTTP status of a refusal (404: no such file), else ``None``.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RangeMismatch(DownloadError):
    """The server answered a Range request with other bytes than those asked for."""


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(text.split())


class Pace:
    """Ends a transfer that brings fewer than ``min_rate`` bytes/s over ``window_s`` seconds."""

    def __init__(self, min_rate: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_rate, self.window_s, self.clock = min_rate, window_s, clock
        self._start, self._bytes = clock(), 0

    def arrived(self, n: int) -> None:
        """Count ``n`` received bytes; raise :class:`Interrupted` if the window was too slow."""
        self._bytes += n
        now = self.clock()
        elapsed = now - self._start
        if elapsed < self.window_s:
            return
        if self._bytes < self.min_rate * elapsed:
            raise Interrupted(f"under {self.min_rate} bytes/s for {self.window_s:g} s")
        self._start, self._bytes = now, 0


class _PacedReader(io.RawIOBase):
    """A socket's raw reader that reports every read to a :class:`Pace`."""

    def __init__(self, raw: Any, pace: Pace) -> None:
        super().__init__()
        self._raw, self._pace = raw, pace

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        n = self._raw.readinto(buffer)
        if n:  # end of stream (0) is never too slow
            self._pace.arrived(n)
        return n

    def fileno(self) -> int:
        return int(self._raw.fileno())

    def close(self) -> None:
        self._raw.close()  # releases the socket's reference, as the plain reader would
        super().close()


class _PacedResponse(http.client.HTTPResponse):
    """A response whose every read, from the status line on, goes through a :class:`Pace`."""

    def __init__(self, sock: Any, *args: Any, pace: Pace, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_PacedReader(self.fp.detach(), pace))


def _paced(connection: type[http.client.HTTPConnection],
           pace: Pace) -> Callable[..., http.client.HTTPConnection]:
    """A factory of ``connection`` objects whose responses are paced, for ``do_open``."""

    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = connection(*args, **kwargs)
        conn.response_class = functools.partial(_PacedResponse, pace=pace)  # type: ignore[assignment]
        return conn
    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, pace: Pace) -> None:
        super().__init__()
        self._pace = pace

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_paced(http.client.HTTPConnection, self._pace), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, pace: Pace) -> None:
        super().__init__()
        self._pace = pace

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_paced(http.client.HTTPSConnection, self._pace), req,
                            context=self._context)  # type: ignore[attr-defined]


def _reason(exc: BaseException, timeout_s: float) -> str:
    """One line saying why the link failed."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"no data for {timeout_s:g} s"
    if isinstance(exc, http.client.IncompleteRead):
        return "the body was cut short"
    return one_line(str(exc)) or type(exc).__name__


@dataclass
class Reply:
    """An open response: the body's bytes start at ``start`` of a file of ``total`` bytes."""

    start: int
    total: int | None
    response: http.client.HTTPResponse | None  # None: nothing left to send
    timeout_s: float

    def read(self) -> bytes:
        """The next bytes of the body as soon as some arrive; ``b""`` at its end."""
        if self.response is None:
            return b""
        try:
            return self.response.read1(BLOCK)
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise Interrupted(_reason(exc, self.timeout_s)) from None

    def close(self) -> None:
        """Close the connection."""
        if self.response is not None:
            self.response.close()


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+", value.strip()):
        raise BadReply(f"invalid Content-Length {value!r}")
    return int(value)


def _check(response: http.client.HTTPResponse, offset: int, timeout_s: float) -> Reply:
    """The reply for a GET from ``offset``, or an error when it is not that."""
    headers = response.headers
    length = _content_length(headers.get("Content-Length"))
    if (headers.get("Content-Type") or "").split(";")[0].strip().lower() == "text/html":
        raise BadReply("the server sent a web page (text/html), not the file; "
                       "a captive portal or a login page?")
    if response.status == 200:
        return Reply(0, length, response, timeout_s)
    if response.status != 206:
        raise BadReply(f"unexpected HTTP {response.status} {one_line(response.reason)}")
    header = headers.get("Content-Range") or ""
    match = _RANGE.fullmatch(header.strip())
    if match:
        first, last, total = int(match[1]), int(match[2]), match[3]
        whole = None if total == "*" else int(total)
        if (first == offset and (whole is None or last == whole - 1)
                and (length is None or length == last - first + 1)):
            return Reply(offset, whole, response, timeout_s)
    problem = (f"answered a request for bytes from {offset} with Content-Range {header!r}"
               f"{f' and Content-Length {length}' if length is not None else ''}")
    raise (RangeMismatch if offset else BadReply)(problem)


def _unsatisfiable(exc: urllib.error.HTTPError, offset: int, timeout_s: float) -> Reply:
    """A 416 to a Range request: the part is complete if the server says the file ends there."""
    match = _UNSATISFIED.fullmatch((exc.headers.get("Content-Range") or "").strip())
    if match and int(match[1]) == offset:
        return Reply(offset, offset, None, timeout_s)
    raise RangeMismatch(f"HTTP 416 for bytes from {offset}, with no file size that ends there")


def get_from(url: str, offset: int, *, timeout_s: float, slow_s: float, min_rate: int,
             clock: Callable[[], float] = time.monotonic) -> Reply:
    """GET ``url`` from byte ``offset`` (``Range`` when above 0); the caller closes the reply.

    Raises :class:`Interrupted` (no byte for ``timeout_s``, under ``min_rate``
    bytes/s for ``slow_s``, a reset, a refused connection), :class:`RangeMismatch`
    (a 206 or 416 that does not fit ``offset``) or :class:`BadReply` (an HTTP error,
    a refused redirect, headers that are not a file's).
    """
    pace = Pace(min_rate, slow_s, clock)
    opener = urllib.request.build_opener(_HTTPHandler(pace), _HTTPSHandler(pace))
    request = urllib.request.Request(url, headers={"User-Agent": "appliance-models/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=timeout_s)
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                return _unsatisfiable(exc, offset, timeout_s)
            raise BadReply(f"HTTP {exc.code} {one_line(str(exc.reason))}",
                           status=exc.code) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):  # trying again will not help
            raise BadReply(_reason(exc, timeout_s)) from None
        raise Interrupted(_reason(exc, timeout_s)) from None
    except (OSError, http.client.IncompleteRead) as exc:
        raise Interrupted(_reason(exc, timeout_s)) from None
    except (http.client.HTTPException, ValueError) as exc:
        raise BadReply(one_line(str(exc)) or type(exc).__name__) from None
    try:
        return _check(response, offset, timeout_s)
    except BaseException:
        response.close()
        raise

"""A request's JSON body: read within a deadline, inflated within a bound, checked off the loop.

aiohttp's own decompression is off (``auto_decompress=False``): it inflated a
gzip body as it arrived, on the event loop, before any route or the token was
checked, and past the body limit (a 4 MB upload of zeros is 4 GiB). Here a
route reads its body only after the middlewares let it through, and then:

* the (compressed) body must arrive within ``body_timeout_s`` and stay under
  :data:`MAX_BODY_BYTES` (aiohttp's ``client_max_size``);
* ``gzip`` and ``deflate`` are inflated on a thread, to at most
  :data:`MAX_BODY_BYTES`; a corrupt or cut stream is a 400;
* the JSON is parsed on the same thread, and its tree walked without
  recursion: nesting deeper than :data:`MAX_DEPTH` and a string that is not
  text (a lone surrogate, such as JSON's escape of U+D800, which no UTF-8
  encoder accepts) are refused with the path of the offending value, before
  anything is submitted.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

from aiohttp import hdrs, web

from appliance.api.errors import ApiError, Problem, bad_request

MAX_BODY_BYTES = 4 << 20
MAX_DEPTH = 64
"""Deepest nesting of arrays and objects in a body (a chat with tools needs about 12)."""
BODY_TIMEOUT_S = web.AppKey("body_timeout_s", float)
"""The application's body deadline, set by the server from ``api.http.body_timeout_s``."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

_Path = tuple[str | int, "_Path"] | None
"""Where a value sits in the body: its key and its parent's path (a linked list)."""


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; anything else is a 4xx :class:`ApiError`."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in _WBITS and encoding != "identity":
        raise ApiError(Problem.MEDIA_TYPE, "this Content-Encoding is not supported: send the "
                       "body as it is, or with gzip or deflate")
    timeout_s = request.app[BODY_TIMEOUT_S]
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(Problem.TIMEOUT,
                       f"the request body did not arrive within {timeout_s:g} s") from None
    except web.RequestPayloadError:
        raise bad_request("the request body is malformed (its length or chunked framing)"
                          ) from None
    return await asyncio.to_thread(parse, raw, encoding)


def parse(raw: bytes, encoding: str = "identity") -> dict[str, Any]:
    """``raw`` (``encoding``: identity, gzip or deflate) as a checked JSON object."""
    data = raw if encoding == "identity" else inflate(raw, encoding)
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except RecursionError:
        raise bad_request(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise bad_request(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_tree(body)
    return body


def inflate(raw: bytes, encoding: str) -> bytes:
    """``raw`` inflated, at most :data:`MAX_BODY_BYTES` of it; a 400 when corrupt or larger."""
    wbits = _WBITS[encoding]
    if encoding == "deflate" and raw[:1] and raw[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header, as some clients send
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        raise bad_request(f"the request body is not valid {encoding}: {exc}") from None
    if len(data) > MAX_BODY_BYTES:
        raise bad_request(f"the request body inflates to over {MAX_BODY_BYTES >> 20} MiB")
    if not inflater.eof or inflater.unused_data:
        raise bad_request(f"the request body is not valid {encoding}: it is cut short or has "
                          "data after its end")
    return data


def check_tree(body: Any) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and strings that are not text."""
    stack: list[tuple[Any, int, _Path]] = [(body, 0, None)]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise bad_request(f"{_where(path)}: nested deeper than {MAX_DEPTH} levels",
                                  _where(path))
            pairs = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in pairs:
                if isinstance(key, str):
                    _check_text(key, path)
                stack.append((item, depth + 1, (key, path)))


def _check_text(text: str, path: _Path) -> None:
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        where = _where(path)
        raise bad_request(f"{where}: a lone surrogate (\\u{ord(text[exc.start]):04x}) is not "
                          "text", where) from None


def _where(path: _Path) -> str:
    keys: list[str | int] = []
    while path is not None:
        key, path = path
        keys.append(key)
    parts = [f"[{k}]" if isinstance(k, int) else f".{k}" for k in reversed(keys)]
    return "".join(parts).removeprefix(".") or "the request body"

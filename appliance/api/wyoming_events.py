"""One Wyoming client's events, read bounded in size and in time, and checked before use.

The ``wyoming`` library parses the framing (:func:`wyoming.event.async_read_event`)
from an :class:`EventReader`, which bounds each event's data and payload, gives
the client ``idle_timeout_s`` to start its next event (unless we are still
answering it) and ``event_timeout_s`` to send the whole of one once its first
byte came. :func:`parse` turns an event into the library's class and refuses,
as :class:`BadEvent`, what would fail only later: a text that is not a string
or not valid Unicode, audio in a format we do not take or not whole frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from appliance.errors import ApplianceError

MAX_EVENT_BYTES = 1 << 20
"""The largest data or payload of one event (an audio chunk is a few KiB)."""
PARSERS = (Describe, Ping, Transcribe, AudioStart, AudioChunk, AudioStop, Synthesize,
           SynthesizeStart, SynthesizeChunk, SynthesizeStop, Transcript)
"""The events served; any other type is ignored, as the protocol asks."""


class BadEvent(ApplianceError):
    """A client sent something we cannot use; the message says what, ``code`` is the error's."""

    def __init__(self, message: str, code: str = "bad-event") -> None:
        super().__init__(message)
        self.code = code


class Idle(ApplianceError):
    """A client silent for ``idle_timeout_s`` while nothing was answered, or not reading."""


class EventReader:
    """The stream reader the library reads one client's events from, bounded."""

    def __init__(self, reader: asyncio.StreamReader, idle_s: float, event_s: float,
                 busy: Callable[[], bool]) -> None:
        self._reader = reader
        self._idle_s, self._event_s = idle_s, event_s
        self._busy = busy
        self._deadline = 0.0
        self.last_line = b""
        self.refused: str | None = None

    async def readline(self) -> bytes:
        """The event's header line; ``b""`` at the end of the stream."""
        first = await self._first_byte()
        self.last_line = first
        if first in (b"", b"\n"):
            return first
        self._deadline = asyncio.get_running_loop().time() + self._event_s
        try:
            self.last_line += await self._within(self._reader.readline())
        except ValueError:
            self.refused = "a line over 64 KiB"
            raise
        return self.last_line

    async def readexactly(self, n: int) -> bytes:
        """The event's data or payload, of the size its header gave."""
        if n > MAX_EVENT_BYTES:
            self.refused = f"an event of {n} bytes (at most {MAX_EVENT_BYTES})"
            raise ValueError(self.refused)
        return await self._within(self._reader.readexactly(n))

    def feed_eof(self) -> None:
        """End the stream (the library's ``stop``)."""
        self._reader.feed_eof()

    async def _first_byte(self) -> bytes:
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    return await self._reader.read(1)
            except TimeoutError:
                if not self._busy():
                    raise Idle(f"nothing sent for {self._idle_s:g} s") from None

    async def _within(self, reading: Any) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                return bytes(await reading)
        except TimeoutError:
            raise BadEvent(f"an event not sent in full within {self._event_s:g} s",
                           "timeout") from None


def parse(event: Event) -> Any:
    """The library's class for ``event`` (``None`` for types we do not serve), checked."""
    for cls in PARSERS:
        if cls.is_type(event.type):
            try:
                message = cls.from_event(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BadEvent(f"a malformed {event.type} event ({exc!r})") from None
            _check(event.type, message)
            return message
    return None


def _check(kind: str, message: Any) -> None:
    if isinstance(message, Transcript | Synthesize | SynthesizeChunk):
        check_text(kind, message.text)
    elif isinstance(message, AudioStart | AudioChunk):
        check_format(message.rate, message.width, message.channels)
        if isinstance(message, AudioChunk):
            frame = message.width * message.channels
            if len(message.audio) % frame:
                raise BadEvent(f"an audio chunk of {len(message.audio)} bytes is not whole "
                               f"frames of {frame} bytes ({message.width}-byte samples, "
                               f"{message.channels} channel(s))")


def check_text(kind: str, text: Any) -> None:
    """Refuse a text that is not a string, or has a lone surrogate (not encodable Unicode)."""
    if not isinstance(text, str):
        raise BadEvent(f"a {kind} event's text must be a string, not {type(text).__name__}")
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise BadEvent(f"a {kind} event's text has a lone surrogate "
                       f"(U+{ord(text[exc.start]):04X} at character {exc.start})") from None


def check_format(rate: Any, width: Any, channels: Any) -> None:
    """Refuse audio we cannot convert (exact integers only: ``1.0`` or ``true`` are not)."""
    if not (type(rate) is int and 8000 <= rate <= 192000 and type(width) is int
            and width in (1, 2, 3, 4) and type(channels) is int and channels in (1, 2)):
        raise BadEvent(f"unsupported audio: rate {rate!r}, width {width!r}, channels "
                       f"{channels!r} (8 to 192 kHz, 1 to 4 bytes, mono or stereo)")

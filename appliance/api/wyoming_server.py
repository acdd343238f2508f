"""The Wyoming server: speech to text, text to speech and "handle" for Home Assistant.

The ``wyoming`` library does the framing and the TCP server; this module
reads its events, one :class:`Connection` per client, and answers them
(speech in here, speech out in :mod:`~appliance.api.wyoming_speak`, handle in
:mod:`~appliance.api.wyoming_handle`):

* ``describe`` → ``info`` at once, whatever else runs (Home Assistant waits 1 s);
* ``transcribe``, ``audio-start``/``-chunk``/``-stop`` → ``transcript``, from
  audio of any rate, width and channel count;
* ``synthesize`` → ``audio-start``/``-chunk``/``-stop``, and streamed synthesis;
* ``transcript`` → ``handled`` with the model's answer, or ``not-handled``
  with the reason (refused, rate limited, cooling down, toy-mode limits).

A client that sends something that is not a Wyoming event, or disconnects
mid-stream, is dropped with one log line; a generation it was waiting for is
cancelled; every other client goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from functools import partial
from typing import Any

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer, AsyncTcpServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from appliance.api.gate import ApiGate, Pending
from appliance.api.speech import Speech, Transcription
from appliance.api.wyoming_handle import Handler
from appliance.api.wyoming_info import build_info
from appliance.api.wyoming_speak import Speaker
from appliance.config import Settings
from appliance.config.addresses import check_uri
from appliance.config.schema import WyomingSettings
from appliance.errors import ApplianceError, ConfigError
from appliance.logs import get_logger
from appliance.service.guard import INTERNAL_ERROR
from appliance.voice.kid_safe import KidFilter

log = get_logger("wyoming")

MAX_EVENT_BYTES = 1 << 20
"""The largest data or payload of one event (an audio chunk is a few KiB)."""
MAX_AUDIO_S = 300.0
PARSERS = (Describe, Ping, Transcribe, AudioStart, AudioChunk, AudioStop, Synthesize,
           SynthesizeStart, SynthesizeChunk, SynthesizeStop, Transcript)
"""The events served; any other type is ignored, as the protocol asks."""


class BadEvent(Exception):
    """A client sent something that is not a usable Wyoming event; the message says what."""


class _BoundedReader:
    """The stream reader the library reads events from, with each event's size bounded."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.last_line = b""
        self.refused: str | None = None

    async def readline(self) -> bytes:
        try:
            self.last_line = await self._reader.readline()
        except ValueError:
            self.refused = "a line over 64 KiB"
            raise
        return self.last_line

    async def readexactly(self, n: int) -> bytes:
        if n > MAX_EVENT_BYTES:
            self.refused = f"an event of {n} bytes (at most {MAX_EVENT_BYTES})"
            raise ValueError(self.refused)
        return await self._reader.readexactly(n)

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def _parse(event: Event) -> Any:
    """The library's class for ``event`` (``None`` for types we do not serve)."""
    for cls in PARSERS:
        if cls.is_type(event.type):
            try:
                return cls.from_event(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BadEvent(f"a malformed {event.type} event ({exc!r})") from None
    return None


def _check_format(rate: Any, width: Any, channels: Any) -> None:
    if not (isinstance(rate, int) and 8000 <= rate <= 192000 and width in (1, 2, 3, 4)
            and channels in (1, 2)):
        raise BadEvent(f"unsupported audio: rate {rate!r}, width {width!r}, channels "
                       f"{channels!r} (8 to 192 kHz, 1 to 4 bytes, mono or stereo)")


class WyomingServer:
    """The server and what its connections share."""

    def __init__(self, settings: Settings, wyoming: WyomingSettings, gate: ApiGate,
                 model: str) -> None:
        self.settings, self.wyoming, self.gate, self.model = settings, wyoming, gate, model
        key = "api.wyoming.listen"
        try:
            check_uri(wyoming.listen)
            self._server = AsyncServer.from_uri(wyoming.listen)
        except ValueError as exc:
            raise ConfigError(str(exc), file=settings.source, line=settings.line_of(key),
                              key=key) from None
        self.speech = Speech(settings)
        self.handler = Handler(gate, KidFilter(settings.voice.block_list)
                               if settings.voice.kid_safe else None)
        self.connections: set[Connection] = set()

    @property
    def tcp(self) -> tuple[str, int] | None:
        """Host and port, for a TCP server."""
        server = self._server
        return (server.host, server.port) if isinstance(server, AsyncTcpServer) else None

    def info(self) -> Event:
        """The ``info`` event, for the parts that work right now."""
        return build_info(self.settings, self.speech, self.model).event()

    async def start(self) -> None:
        """Load speech, then listen; an address that cannot be bound is a config error."""
        await self.speech.start()
        try:
            await self._server.start(partial(Connection, self))
        except OSError as exc:
            key = "api.wyoming.listen"
            raise ConfigError(f"cannot listen on {self.wyoming.listen}: {exc.strerror or exc}",
                              file=self.settings.source, line=self.settings.line_of(key),
                              key=key) from None
        log.info("wyoming_listening", listen=self.wyoming.listen, asr=self.speech.has_asr,
                 tts=self.speech.has_tts)

    async def close(self) -> None:
        """Stop listening, end every connection and what it waits for."""
        await self._server.stop()
        for connection in list(self.connections):
            await connection.disconnect()
        await self.speech.close()


class Connection(AsyncEventHandler):
    """One client."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        super().__init__(_BoundedReader(reader), writer)  # type: ignore[arg-type]
        self.server = server
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "local"
        self._transcription: Transcription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[Pending] = set()
        self._write_lock = asyncio.Lock()
        self.speaker = Speaker(server.speech, self.write_event, self._spawn,
                               server.settings.voice.early_words, self.peer)

    async def run(self) -> None:
        """Serve events until the client leaves; a bad client is dropped with a log line."""
        self._is_running = True
        self.server.connections.add(self)
        reader: _BoundedReader = self.reader  # type: ignore[assignment]
        try:
            while self._is_running:
                try:
                    event = await async_read_event(self.reader)
                except (AttributeError, KeyError, TypeError):  # JSON that is not an event
                    raise BadEvent("not a Wyoming event") from None
                if event is None:
                    if reader.refused or reader.last_line.strip():
                        raise BadEvent(reader.refused or "not a Wyoming event")
                    break
                if not await self.handle_event(event):
                    break
        except BadEvent as exc:
            log.warning("wyoming_client_dropped", peer=self.peer, reason=str(exc))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.write_event(Error(text=str(exc), code="bad-event").event())
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("wyoming_client_gone", peer=self.peer, reason=type(exc).__name__)
        except Exception:
            log.exception("wyoming_handler_failed", peer=self.peer)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.write_event(Error(text=INTERNAL_ERROR).event())
        finally:
            await self.disconnect()
            self.writer.close()

    async def write_event(self, event: Event) -> None:
        """Send one event; the answer tasks and the reading loop never interleave events."""
        async with self._write_lock:
            await super().write_event(event)

    async def disconnect(self) -> None:
        """The client is gone: cancel what it was waiting for."""
        self.server.connections.discard(self)
        for pending in list(self._pending):
            pending.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._drop_transcription()
        self.speaker.close()

    def _drop_transcription(self) -> None:
        if self._transcription is not None:
            self._transcription.close()
            self._transcription = None

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; ``False`` ends the connection."""
        message = _parse(event)
        if isinstance(message, Describe):
            await self.write_event(self.server.info())
        elif isinstance(message, Ping):
            await self.write_event(Pong(text=message.text).event())
        elif isinstance(message, Transcribe | AudioStart | AudioChunk | AudioStop):
            await self._hear(message)
        elif isinstance(message, Synthesize | SynthesizeStart | SynthesizeChunk | SynthesizeStop):
            await self.speaker.handle(message)
        elif isinstance(message, Transcript):
            self._spawn(self._handle(message))
        else:
            log.debug("wyoming_event_ignored", type=event.type, peer=self.peer)
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` beside the reading loop, which notices a disconnect (and cancels it)."""
        task = asyncio.create_task(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except ConnectionError as exc:
            log.info("wyoming_client_gone", peer=self.peer, reason=type(exc).__name__)
        except Exception:
            log.exception("wyoming_handler_failed", peer=self.peer)

    # --- speech to text ---------------------------------------------------------------------
    async def _hear(self, message: Transcribe | AudioStart | AudioChunk | AudioStop) -> None:
        speech = self.server.speech
        if isinstance(message, Transcribe):
            self._drop_transcription()
            return
        if isinstance(message, AudioStart | AudioChunk):
            _check_format(message.rate, message.width, message.channels)
            if isinstance(message, AudioStart) or self._transcription is None:
                self._drop_transcription()
                try:
                    self._transcription = await speech.transcription()
                except ApplianceError as exc:
                    raise BadEvent(f"speech to text is unavailable: {exc}") from None
            if isinstance(message, AudioChunk):
                transcription = self._transcription
                if transcription.seconds + message.seconds > MAX_AUDIO_S:
                    raise BadEvent(f"an audio stream over {MAX_AUDIO_S:.0f} s")
                transcription.feed(message)
            return
        transcription, self._transcription = self._transcription, None
        text = await transcription.finish() if transcription else ""
        log.info("wyoming_transcribed", peer=self.peer, chars=len(text),
                 audio_s=round(transcription.seconds, 2) if transcription else 0.0)
        await self.write_event(Transcript(text=text, language=speech.asr_language).event())

    async def _handle(self, message: Transcript) -> None:
        await self.write_event(await self.server.handler.handle(message, self.peer,
                                                                self._pending))

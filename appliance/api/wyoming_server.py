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

The protocol has no authentication, so :mod:`~appliance.api.wyoming_admit`
serves only ``api.wyoming.allowed_clients``, at most ``max_connections`` at
once. A client that sends nothing for ``idle_timeout_s`` while nothing is
being answered for it, reads nothing we send for as long, or takes over
``event_timeout_s`` to send one event, is dropped (:mod:`~appliance.api.wyoming_events`).
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
from appliance.api.speech import Busy, Speech, Transcription
from appliance.api.wyoming_admit import Admission
from appliance.api.wyoming_events import BadEvent, EventReader, Idle, parse
from appliance.api.wyoming_handle import Handler
from appliance.api.wyoming_info import build_info
from appliance.api.wyoming_speak import SynthesisSession
from appliance.config import Settings
from appliance.config.addresses import check_uri
from appliance.config.schema_api import WyomingSettings
from appliance.errors import ApplianceError, ConfigError
from appliance.log_limit import RateLimitedLog
from appliance.logs import get_logger
from appliance.service.guard import INTERNAL_ERROR, guarded
from appliance.voice.kid_safe import KidFilter

log = get_logger("wyoming")

MAX_AUDIO_S = 300.0
DROPPED_LOG_BURST = 10
"""Lines about dropped clients per few seconds; more are counted, not logged."""


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
        self.admission = Admission(wyoming.allowed_clients, wyoming.max_connections)
        self.dropped = RateLimitedLog(log, "wyoming_client_dropped", burst=DROPPED_LOG_BURST)
        self.asr_busy = RateLimitedLog(log, "wyoming_asr_busy")
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
        for limited in (self.admission.refusals, self.dropped, self.asr_busy):
            limited.close()


class Connection(AsyncEventHandler):
    """One client."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        wyoming = server.wyoming
        super().__init__(EventReader(reader, wyoming.idle_timeout_s,  # type: ignore[arg-type]
                                     wyoming.event_timeout_s, lambda: self.busy), writer)
        self.server = server
        self.peername = writer.get_extra_info("peername")
        self.peer = str(self.peername[0]) if isinstance(self.peername, tuple) else "local"
        self._transcription: Transcription | None = None
        self._refused = False  # the audio stream was refused as busy
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[Pending] = set()
        self._answering = 0
        self._write_lock = asyncio.Lock()
        self.synthesis = SynthesisSession(server.speech, self.write_event, self._spawn,
                                          server.settings.voice.early_words, self.peer)

    @property
    def busy(self) -> bool:
        """We owe the client an answer (so its silence is no idleness)."""
        return self._answering > 0 or self.synthesis.busy

    async def run(self) -> None:
        """Serve events until the client leaves; a bad client is dropped with a log line."""
        server = self.server
        refused = server.admission.refuse(self.peername, len(server.connections))
        if refused is not None:
            if server.admission.allows(self.peername):  # a neighbour: tell it why
                with contextlib.suppress(ConnectionError, RuntimeError, Idle):
                    await self.write_event(Error(text=f"busy: {refused}", code="busy").event())
            self.writer.close()
            return
        server.connections.add(self)
        try:
            await self._serve()
        finally:
            await self.disconnect()
            self.writer.close()

    async def _failed(self, *_: object) -> None:
        """The guard's answer to a bug: one ``error`` event, ``internal error``."""
        with contextlib.suppress(ConnectionError, RuntimeError, Idle):
            await self.write_event(Error(text=INTERNAL_ERROR).event())

    def _peer(self, *_: object) -> dict[str, object]:
        return {"peer": self.peer}

    @guarded(_failed, event="wyoming_handler_failed", context=_peer)
    async def _serve(self) -> None:
        """Read and answer events until the end of the stream or a bad client."""
        reader: EventReader = self.reader  # type: ignore[assignment]
        try:
            while True:  # until the end of the stream (the library's stop() ends it too)
                try:
                    event = await async_read_event(self.reader)
                except (AttributeError, KeyError, TypeError):  # JSON that is not an event
                    raise BadEvent("not a Wyoming event") from None
                except RecursionError:  # the library's json.loads of a deeply nested line
                    raise BadEvent("not a Wyoming event: JSON nested too deeply") from None
                if event is None:
                    if reader.refused or reader.last_line.strip():
                        raise BadEvent(reader.refused or "not a Wyoming event")
                    break
                if not await self.handle_event(event):
                    break
        except BadEvent as exc:
            await self._drop(exc)
        except Idle as exc:
            log.info("wyoming_client_idle", peer=self.peer, reason=str(exc))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("wyoming_client_gone", peer=self.peer, reason=type(exc).__name__)

    async def _drop(self, exc: BadEvent) -> None:
        """Tell the client what was wrong with what it sent, and hang up."""
        self.server.dropped.warning("dropped", peer=self.peer, reason=str(exc))
        with contextlib.suppress(ConnectionError, RuntimeError, Idle):
            await self.write_event(Error(text=str(exc), code=exc.code).event())
        self.writer.close()  # (from a task beside the reading loop: that loop ends too)

    async def write_event(self, event: Event) -> None:
        """Send one event; the answer tasks and the reading loop never interleave events.

        A client that reads nothing for ``idle_timeout_s`` while we send is :class:`Idle`.
        """
        timeout = self.server.wyoming.idle_timeout_s
        try:
            async with asyncio.timeout(timeout), self._write_lock:
                await super().write_event(event)
        except TimeoutError:
            raise Idle(f"read nothing we sent for {timeout:g} s") from None

    async def disconnect(self) -> None:
        """The client is gone: cancel what it was waiting for."""
        self.server.connections.discard(self)
        for pending in list(self._pending):
            pending.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._drop_transcription()
        self.synthesis.close()

    def _drop_transcription(self) -> None:
        if self._transcription is not None:
            self._transcription.close()
            self._transcription = None

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; ``False`` ends the connection."""
        message = parse(event)
        if isinstance(message, Describe):
            await self.write_event(self.server.info())
        elif isinstance(message, Ping):
            await self.write_event(Pong(text=message.text).event())
        elif isinstance(message, Transcribe | AudioStart | AudioChunk | AudioStop):
            await self._hear(message)
        elif isinstance(message, Synthesize | SynthesizeStart | SynthesizeChunk | SynthesizeStop):
            await self.synthesis.handle(message)
        elif isinstance(message, Transcript):
            self._spawn(self._handle(message))
        else:
            log.debug("wyoming_event_ignored", type=event.type, peer=self.peer)
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` beside the reading loop, which notices a disconnect (and cancels it)."""
        task = asyncio.create_task(self._run_task(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Cancelled before it ran (the client left at once): ``work`` was never awaited.
        task.add_done_callback(lambda _task: work.close())
        return task

    @guarded(_failed, event="wyoming_handler_failed", context=_peer)
    async def _run_task(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except BadEvent as exc:
            await self._drop(exc)
        except (ConnectionError, Idle) as exc:
            log.info("wyoming_client_gone", peer=self.peer, reason=str(exc) or type(exc).__name__)
            self.writer.close()  # and the reading loop ends

    # --- speech to text ---------------------------------------------------------------------
    async def _hear(self, message: Transcribe | AudioStart | AudioChunk | AudioStop) -> None:
        speech = self.server.speech
        if isinstance(message, Transcribe):
            self._drop_transcription()
            self._refused = False
            return
        if isinstance(message, AudioStart | AudioChunk):
            if isinstance(message, AudioStart) or (self._transcription is None
                                                   and not self._refused):
                self._drop_transcription()
                self._refused = False
                try:
                    self._transcription = await speech.transcription()
                except Busy as exc:  # this stream's audio is read and dropped
                    self._refused = True
                    self.server.asr_busy.warning("busy", peer=self.peer, reason=str(exc))
                    await self.write_event(Error(text=str(exc), code="busy").event())
                    return
                except ApplianceError as exc:
                    raise BadEvent(f"speech to text is unavailable: {exc}") from None
            transcription = self._transcription
            if isinstance(message, AudioChunk) and transcription is not None:
                if transcription.seconds + message.seconds > MAX_AUDIO_S:
                    raise BadEvent(f"an audio stream over {MAX_AUDIO_S:.0f} s")
                await transcription.feed(message)
            return
        if self._refused:  # the end of a stream refused as busy: it was answered
            self._refused = False
            return
        transcription, self._transcription = self._transcription, None
        text = await transcription.finish() if transcription else ""
        log.info("wyoming_transcribed", peer=self.peer, chars=len(text),
                 audio_s=round(transcription.seconds, 2) if transcription else 0.0)
        await self.write_event(Transcript(text=text, language=speech.asr_language).event())

    async def _handle(self, message: Transcript) -> None:
        self._answering += 1
        try:
            answer = await self.server.handler.handle(message, self.peer, self._pending)
        finally:
            self._answering -= 1
        await self.write_event(answer)

"""The Wyoming server under abuse: big texts, strangers, floods of sockets, fast audio, bad events.

Each scenario runs against ``appliance run`` (with mosquitto and the test
model) through the ``wyoming`` library's client or raw sockets. Where an
attack used to freeze the event loop, the test also asserts that the
watchdog kept being fed, that a well-behaved client was served meanwhile,
and that the service's memory stayed bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import threading
import time
import wave
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart

from appliance.api.wyoming_admit import Admission
from appliance.bench.broker import free_port
from appliance.config.loader import parse_settings
from appliance.config.schema_api import WyomingSettings
from appliance.errors import ConfigError
from appliance.hardware import rss_bytes
from appliance.voice.pieces import SentenceSplitter, for_speech, sentences
from tests.conftest import fragments, service_config
from tests.helpers import eventually, read_until
from tests.services import ApplianceProcess, Broker
from tests.speech import PHRASES, korean_model, speak

MB = 1 << 20
WATCHDOG_S = 6.0
"""The watchdog interval the service is started with: it pings every half of it."""
GRAMMAR = "[" + ", ".join(PHRASES) + "]"
Start = Callable[..., ApplianceProcess]


# --- the splitter, fast ------------------------------------------------------------------------

def _within(seconds: float, work: Callable[[], Any]) -> Any:
    """``work()``'s result, or a failure if it takes longer (a quadratic splitter takes hours)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still running after {seconds} s"
    return result[0]


def test_megabytes_of_short_sentences_are_split_in_linear_time() -> None:
    # 3 MB: a second or two; the splitter that copied the rest after each sentence
    # took 30 s for 1 MB here, and minutes for this
    pieces = _within(60, lambda: sentences("a. " * 1_000_000))
    assert len(pieces) == 1_000_000 and set(pieces) == {"a."}
    lines = _within(60, lambda: sentences("one\n" + "\n" * MB + "two"))
    assert lines == ["one", "two"]


def test_a_streamed_megabyte_without_an_end_is_searched_once() -> None:
    def stream(text: str, step: int, early_words: int) -> list[str]:
        splitter = SentenceSplitter(early_words)
        pieces = [p for i in range(0, len(text), step) for p in splitter.feed(text[i: i + step])]
        return pieces + list(splitter.flush())

    assert _within(60, lambda: stream("x" * MB, 100, 3)) == ["x" * MB]
    assert _within(60, lambda: stream("x" * MB + ". Next. ", 7, 0)) == ["x" * MB + ".", "Next."]
    spaced = _within(60, lambda: stream("a, " * 350_000, 10, 3))
    assert spaced[0] == "a," and len(spaced) == 2


def test_markup_cleanup_is_linear_on_a_megabyte_of_empty_lines() -> None:
    # each line start used to scan every empty line after it for a bullet
    assert _within(60, lambda: for_speech("\n" * MB + "no bullet")) == "no bullet"
    assert _within(60, lambda: for_speech("\n - a" * (MB // 4))) == "a " * (MB // 4 - 1) + "a"


# --- allowed clients, fast ---------------------------------------------------------------------

def test_allowed_clients_default_to_the_local_network() -> None:
    admission = Admission(WyomingSettings().allowed_clients, 64)
    for near in ("127.0.0.1", "10.1.2.3", "172.20.0.9", "192.168.1.5", "169.254.3.4", "::1",
                 "fe80::1%eth0", "fd12::5", "::ffff:192.168.0.7"):
        assert admission.allows((near, 1234)), near
    for far in ("8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8"):
        assert not admission.allows((far, 1234)), far


def test_a_bad_allowed_clients_entry_names_file_line_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("api:\n  wyoming:\n    listen: tcp://0.0.0.0:10700\n"
                       "    allowed_clients: [10.0.0.0/8, 10.0.0.0/33]\n", "c.yaml")
    assert str(info.value).startswith(
        "c.yaml:4: api.wyoming.allowed_clients[1]: not an address or a network (CIDR): ")


def test_refusals_are_logged_once_per_window_with_a_count() -> None:
    async def flood() -> list[dict[str, Any]]:
        admission = Admission(["10.0.0.0/8"], 64)
        admission.refusals.every_s = 0.05  # the window, shortened
        with capture_logs() as logged:
            for _ in range(50):
                assert admission.refuse(("127.0.0.1", 1), 0) is not None
            assert len(logged) == 1  # the first at once, the rest counted
            for _ in range(400):  # the summary comes at the window's end
                if len(logged) == 2:
                    break
                await asyncio.sleep(0.05)
            admission.refusals.close()
        return logged

    logged = run(flood())
    assert [(e["event"], e.get("not_allowed")) for e in logged] == [
        ("wyoming_connection_refused", 1), ("wyoming_connection_refused", 49)]
    assert logged[1]["peer"] == "127.0.0.1" and "allowed_clients" in logged[1]["reason"]


# --- against appliance run ---------------------------------------------------------------------

class Wy:
    """``appliance run`` with the Wyoming server on a free port, its pings and its log."""

    def __init__(self, start: Start, more: str = "", speech: bool = True) -> None:
        self.port = free_port()
        voice = (f"voice:\n  model_path: {korean_model()}\n  grammar: {GRAMMAR}\n"
                 "  tts: espeak-ng\n  tts_voice: ko\n") if speech else "voice:\n  tts: none\n"
        self.app = start(f"{voice}api:\n  wyoming: {{listen: 'tcp://127.0.0.1:{self.port}', "
                         f"zeroconf: false{more}}}\n",
                         WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)))
        assert self.app.proc is not None and self.app.notify is not None
        self.pid = self.app.proc.pid
        self.pings: list[float] = []
        sock = self.app.notify.sock

        def read() -> None:  # as systemd does, all the time (a full socket blocks the loop)
            sock.settimeout(None)
            try:
                while data := sock.recv(4096):
                    if "WATCHDOG=1" in data.decode().splitlines():
                        self.pings.append(time.monotonic())
            except OSError:
                pass  # closed with the process

        threading.Thread(target=read, daemon=True, name="watchdog pings").start()
        if speech:  # the vosk model loads in the background: its memory is not a test's
            eventually(lambda: any(e.get("event") == "wyoming_asr_ready"
                                   for e in self.log_events()), 120, "the vosk model loaded")

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port, read_timeout=60)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def count(self, what: str) -> int:
        return len(os.listdir(f"/proc/{self.pid}/{what}"))

    def log_events(self) -> list[dict[str, Any]]:
        path = self.app.workdir / f"run-{self.app.runs}.log"
        return [json.loads(line) for line in path.read_text(errors="replace").splitlines()
                if line.startswith("{")]

    def assert_fed_since(self, since: float) -> None:
        """The watchdog was pinged at its pace from ``since`` until a ping after now."""
        now = time.monotonic()
        eventually(lambda: any(p > now for p in self.pings), 4 * WATCHDOG_S, "watchdog ping",
                   0.1)
        times = [since, *(p for p in self.pings if p > since)]
        gap = max(b - a for a, b in itertools.pairwise(times))
        assert gap < WATCHDOG_S, f"the watchdog went unfed for {gap:.1f} s"


class Peak:
    """The highest value ``measure()`` took, sampled every 0.1 s while in the ``with`` block."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.highest = measure()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.highest = max(self.highest, self.measure())

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def wy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wy]:
    """One service with the default Wyoming settings and speech, shared by four scenarios.

    Each leaves it as it found it, and measures memory, threads and pings from its own
    start. The flood of fast audio, whose dropped streams may hold a transcription slot
    a while longer, is the last of them.
    """
    broker = Broker(tmp_path_factory.mktemp("broker"))
    broker.start()
    workdir = tmp_path_factory.mktemp("wyoming")
    apps: list[ApplianceProcess] = []

    def start(extra: str, **env: str) -> ApplianceProcess:
        app = ApplianceProcess(workdir, service_config(workdir, broker.port, fragments(extra)),
                               env)
        apps.append(app)
        app.start()
        return app

    try:
        yield Wy(start)
    finally:
        for app in apps:
            app.close()
        broker.stop()


async def _one_error(wy: Wy, *events: Event) -> dict[str, Any]:
    """Send ``events``; the server answers one error and hangs up."""
    async with wy.client() as client:
        for event in events:
            await client.write_event(event)
        answer = await client.read_event()
        assert answer is not None and answer.type == "error", answer
        assert await client.read_event() is None  # and nothing more
    return answer.data


async def _describe(wy: Wy) -> None:
    async with wy.client() as client:
        await client.write_event(Describe().event())
        assert (await read_until(client, "info"))[-1].type == "info"


def _raw(port: int, data: bytes = b"", timeout: float = 30) -> bytes:
    """What the server sends on a connection (with ``data`` sent) until it hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if data:
            sock.sendall(data)
        return _drain(sock)


def _drain(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.slow
def test_a_megabyte_to_synthesize_is_refused_without_freezing_the_loop(wy: Wy) -> None:
    before, since = wy.rss(), time.monotonic()

    async def whole() -> dict[str, Any]:
        return await _one_error(wy, Synthesize(text="a. " * 340_000).event())

    async def streamed(chunk: str, times: int) -> dict[str, Any]:
        return await _one_error(wy, SynthesizeStart().event(),
                                *[SynthesizeChunk(text=chunk).event()] * times)

    async def well_behaved() -> list[Event]:
        await _describe(wy)
        async with wy.client() as client:
            await client.write_event(Synthesize(text="안녕하세요.").event())
            return await read_until(client, "audio-stop", "error")

    async def scenario() -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(
            *[whole() for _ in range(4)], streamed("a. " * 340_000, 1),
            streamed("a" * 8000, 3), well_behaved()), 120)

    *errors, served = run(scenario())
    assert [e.get("code") for e in errors] == ["text-too-long"] * 6
    assert "1020000 characters (at most 20000)" in errors[0]["text"]
    assert "streamed synthesis of 24000 characters" in errors[-1]["text"]
    assert served[0].type == "audio-start" and served[-1].type == "audio-stop"
    wy.assert_fed_since(since)
    assert wy.rss() - before < 80 * MB


@pytest.mark.slow
def test_a_client_outside_allowed_clients_is_closed_at_once(start: Start) -> None:
    wy = Wy(start, more=", allowed_clients: [10.0.0.0/8]", speech=False)
    for _ in range(5):
        assert _raw(wy.port) == b""  # closed, and not a word said
    refused = [e for e in wy.log_events() if e.get("event") == "wyoming_connection_refused"]
    assert len(refused) == 1, refused  # rate limited
    assert refused[0]["peer"] == "127.0.0.1" and "allowed_clients" in refused[0]["reason"]


@pytest.mark.slow
def test_connections_are_capped_and_idle_or_half_sent_ones_time_out(start: Start) -> None:
    wy = Wy(start, more=", max_connections: 4, idle_timeout_s: 2, event_timeout_s: 2",
            speech=False)
    fds, before, since = wy.count("fd"), wy.rss(), time.monotonic()
    # these four are accepted first, and fill the cap: of what follows, most is refused
    idle = [socket.create_connection(("127.0.0.1", wy.port), timeout=30) for _ in range(4)]
    flood = [socket.create_connection(("127.0.0.1", wy.port), timeout=30) for _ in range(300)]
    try:
        answers = [_drain(sock) for sock in flood]  # each is hung up on: no fd is kept
        assert all(a == b"" or b'"busy"' in a for a in answers)
        assert any(b'"busy"' in a for a in answers)
        assert wy.count("fd") <= fds + 4 + 8  # the idle four, and a little for the rest
        assert all(_drain(sock) == b"" for sock in idle)  # closed after 2 s of silence
        run(_describe(wy))  # a well-behaved client is served while the flood's sockets are open
    finally:
        for sock in idle + flood:
            sock.close()

    half_header = _raw(wy.port, b'{"type": "describe", "data": {')
    half_payload = _raw(wy.port, b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, '
                                 b'"channels": 1}, "payload_length": 100}\n' + b"\0" * 50)
    for answer in (half_header, half_payload):
        assert b"not sent in full within 2 s" in answer, answer

    async def long_answer() -> Event:  # waiting for a generation is not idleness
        async with wy.client() as client:
            await client.write_event(Transcript(text="Count from one to thirty.").event())
            return (await read_until(client, "handled", "not-handled", "error"))[-1]

    assert run(long_answer()).type == "handled"
    refused = [e for e in wy.log_events() if e.get("event") == "wyoming_connection_refused"]
    assert 1 <= len(refused) <= 1 + (time.monotonic() - since) / 5
    wy.assert_fed_since(since)
    assert wy.rss() - before < 50 * MB


async def _transcribe(wy: Wy, wav: Path) -> str:
    with wave.open(str(wav)) as w:
        frames = w.readframes(w.getnframes())
    async with wy.client() as client:
        await client.write_event(Transcribe(language="ko").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(frames), 4096):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                                audio=frames[i: i + 4096]).event())
        await client.write_event(AudioStop().event())
        event = (await read_until(client, "transcript", "error"))[-1]
    assert event.type == "transcript", event
    return str(Transcript.from_event(event).text)


@pytest.mark.slow
def test_streams_beyond_the_transcription_slots_are_refused_and_threads_stay_few(
        wy: Wy, tmp_path: Path) -> None:
    wav = speak("날씨", tmp_path / "phrase.wav")
    assert run(_transcribe(wy, wav)) == "날씨"  # the model is loaded, its threads started
    threads = wy.count("task")

    async def stream() -> Event | None:
        async with wy.client() as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                                audio=bytes(3200)).event())
            answer = asyncio.create_task(client.read_event())
            done, _ = await asyncio.wait([answer], timeout=8)
            if done:  # refused: busy
                return answer.result()
            await client.write_event(AudioStop().event())
            return await answer

    async def scenario() -> list[Event | None]:
        return await asyncio.wait_for(asyncio.gather(*[stream() for _ in range(12)]), 120)

    with Peak(lambda: wy.count("task")) as peak:
        answers = run(scenario())
    kinds = sorted(a.type if a is not None else "none" for a in answers)
    assert kinds == ["error"] * 9 + ["transcript"] * 3, kinds
    busy = [a for a in answers if a is not None and a.type == "error"]
    assert all(a.data.get("code") == "busy" and "busy" in a.data["text"] for a in busy)
    assert peak.highest <= threads + 4, (threads, peak.highest)
    assert run(_transcribe(wy, wav)) == "날씨"
    assert wy.count("task") <= threads + 4


@pytest.mark.slow
def test_malformed_events_get_one_error_naming_the_problem(wy: Wy) -> None:
    async def scenario() -> list[dict[str, Any]]:
        start3 = AudioStart(rate=16000, width=3, channels=1).event()
        return [
            await _one_error(wy, Event("transcript", {"text": 5})),
            await _one_error(wy, start3, AudioChunk(rate=16000, width=3, channels=1,
                                                    audio=b"\0" * 4).event()),
            await _one_error(wy, Synthesize(text="가" * 44_000).event()),  # 132 KB, one sentence
            await _one_error(wy, Synthesize(text="😀" * 17_000).event()),  # 68 KB
        ]

    errors = run(scenario())
    for raw in (b'{"type": "synthesize", "data": {"text": "a \\ud800 b"}}\n',
                b'{"type": "transcript", "data": {"text": "\\udfff"}}\n'):
        answer = _raw(wy.port, raw)
        errors.append(json.loads(answer.split(b"\n")[1]))  # the header, then the data
    texts = [e["text"] for e in errors]
    assert "transcript event's text must be a string, not int" in texts[0]
    assert "4 bytes is not whole frames of 3 bytes" in texts[1]
    assert "44000 characters (at most 20000)" in texts[2]
    assert "a sentence of 68000 bytes (at most 65536)" in texts[3]
    assert "lone surrogate (U+D800 at character 2)" in texts[4]
    assert "lone surrogate (U+DFFF at character 0)" in texts[5]
    assert not any(e.get("event") == "wyoming_handler_failed" for e in wy.log_events())


@pytest.mark.slow
def test_fast_hifi_audio_is_read_no_faster_than_vosk_hears_it(wy: Wy, tmp_path: Path) -> None:
    before, since = wy.rss(), time.monotonic()

    async def flood() -> int:  # 192 kHz, 32-bit stereo: 1.5 MB a second of audio
        sent = 0
        async with wy.client() as client:
            await client.write_event(AudioStart(rate=192000, width=4, channels=2).event())
            chunk = AudioChunk(rate=192000, width=4, channels=2, audio=bytes(MB)).event()
            end = asyncio.get_running_loop().time() + 5
            while sent < 40 and asyncio.get_running_loop().time() < end:
                await client.write_event(chunk)
                sent += 1
        return sent

    async def scenario() -> list[int]:
        floods = asyncio.gather(*[flood() for _ in range(3)])
        await asyncio.sleep(1)
        await _describe(wy)  # served while three streams pour in
        return await asyncio.wait_for(floods, 120)

    with Peak(wy.rss) as rss:
        sent = run(scenario())
    assert sum(sent) > 3  # they did send
    assert rss.highest - before < 50 * MB, f"+{(rss.highest - before) / MB:.0f} MB"
    wy.assert_fed_since(since)
    wav = speak("안녕하세요", tmp_path / "phrase.wav")
    assert run(_transcribe(wy, wav)) == "안녕하세요"  # the slots came back

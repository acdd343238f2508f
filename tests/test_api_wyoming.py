"""The Wyoming server, against ``appliance run``, with the ``wyoming`` library's TCP client."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import socket
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop
from zeroconf import DNSQuestionType, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from appliance.bench.broker import free_port
from tests.helpers import MODEL, keep_notify_drained, llm_config, read_until, write_config
from tests.services import ApplianceProcess, Broker, Peer
from tests.speech import PHRASES, korean_model, speak

pytestmark = pytest.mark.slow
MAX_TOKENS = 256
"""The answers' budget: a story still runs when a test acts on it (describes, a disconnect),
and one that nobody cancels ends in a few seconds, not the model's time for 400 tokens.
Not 96: a story of 96 tokens takes 1.3 s, and on a busy CPU the disconnect's cancel may
come later than that."""


class WyomingApp:
    """``appliance run`` with the Wyoming server (Korean speech, espeak-ng's Korean voice)."""

    def __init__(self, workdir: Path, broker: Broker, voice: dict[str, Any] | None = None,
                 ) -> None:
        self.workdir = workdir
        self.port = free_port()
        (workdir / "temp").write_text("51000\n")
        config = write_config(workdir / "config.yaml", {
            "device_id": "wy1", "llm": llm_config(MAX_TOKENS),
            "mqtt": {"port": broker.port, "ask_rate_per_min": 1000},
            "thermal": {"zone_path": workdir / "temp"},
            "voice": {"model_path": korean_model(), "grammar": list(PHRASES),
                      "tts": "espeak-ng", "tts_voice": "ko", **(voice or {})},
            "api": {"wyoming": {"listen": f"tcp://127.0.0.1:{self.port}", "zeroconf": True,
                                "name": f"appliance-test-{self.port}"}}})
        self.states = Peer(broker.port, ["appliance/wy1/state"])
        self.process = ApplianceProcess(workdir, config)
        self.process.start()
        keep_notify_drained(self.process)

    def mark(self) -> int:
        """Where the states published from now on begin (for :meth:`generating`)."""
        while True:
            try:
                self.states.seen.append(self.states.messages.get_nowait())
            except queue.Empty:
                return len(self.states.seen)

    async def generating(self, since: int) -> None:
        """Wait until a generation runs that began after ``since`` (from :meth:`mark`)."""
        await asyncio.to_thread(self.states.wait_for,
                                lambda m: m.json()["state"] == "thinking", 60, since)

    def close(self) -> None:
        self.process.close()
        self.states.close()

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port, read_timeout=120)

    def log_events(self) -> list[dict[str, Any]]:
        path = self.workdir / f"run-{self.process.runs}.log"
        return [json.loads(line) for line in path.read_text(errors="replace").splitlines()
                if line.startswith("{")]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WyomingApp]:
    broker = Broker(tmp_path_factory.mktemp("broker"))
    broker.start()
    a = WyomingApp(tmp_path_factory.mktemp("wyoming"), broker)
    yield a
    a.close()
    broker.stop()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _describe(app: WyomingApp) -> Info:
    async with app.client() as client:
        await client.write_event(Describe().event())
        event = (await read_until(client, "info"))[-1]
    return Info.from_event(event)


def _rate(info: Info) -> int:
    match = re.search(r"(\d+) Hz", info.tts[0].voices[0].description or "")
    assert match, info.tts[0].voices[0].description
    return int(match.group(1))


async def _transcribe(app: WyomingApp, wav: Path, chunk_frames: int = 1024) -> str:
    with wave.open(str(wav)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    step = chunk_frames * width * channels
    async with app.client() as client:
        await client.write_event(Transcribe(language="ko").event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        for i in range(0, len(frames), step):
            await client.write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                                audio=frames[i: i + step]).event())
        await client.write_event(AudioStop().event())
        event = (await read_until(client, "transcript", "error"))[-1]
    assert event.type == "transcript", event
    return Transcript.from_event(event).text


def test_describe_lists_asr_tts_and_handle(app: WyomingApp) -> None:
    info = run(_describe(app))
    assert [p.name for p in info.asr] == ["vosk"]
    assert info.asr[0].models[0].languages == ["ko"] and info.asr[0].installed
    assert "멈춰" in (info.asr[0].description or "")
    assert info.tts[0].name == "espeak-ng" and info.tts[0].voices[0].languages == ["ko"]
    assert info.tts[0].supports_synthesize_streaming and info.tts[0].installed
    assert _rate(info) == 22050
    assert info.handle[0].installed and info.handle[0].models[0].name == MODEL
    assert info.handle[0].models[0].languages == ["ko", "en"]


@pytest.mark.parametrize("phrase", ["안녕하세요", "음악 틀어"])
def test_a_korean_phrase_is_transcribed(app: WyomingApp, tmp_path: Path, phrase: str) -> None:
    # espeak-ng's own 22050 Hz: the server converts the rate
    wav = speak(phrase, tmp_path / "phrase.wav", rate=None)
    assert run(_transcribe(app, wav)) == phrase


def test_stereo_audio_is_converted(app: WyomingApp, tmp_path: Path) -> None:
    mono = speak("날씨", tmp_path / "mono.wav")
    with wave.open(str(mono)) as w:
        frames = w.readframes(w.getnframes())
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"".join(frames[i: i + 2] * 2 for i in range(0, len(frames), 2)))
    assert run(_transcribe(app, stereo)) == "날씨"


def test_a_sentence_is_synthesized_at_the_advertised_rate(app: WyomingApp) -> None:
    async def scenario() -> list[Event]:
        async with app.client() as client:
            await client.write_event(Synthesize(text="안녕하세요. 반갑습니다.").event())
            return await read_until(client, "audio-stop", "error")

    rate = _rate(run(_describe(app)))
    events = run(scenario())
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop"
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (rate, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert chunks and all(c.rate == rate for c in chunks)
    assert sum(c.seconds for c in chunks) > 0.5


def test_streamed_synthesis_speaks_each_sentence_once(app: WyomingApp) -> None:
    async def scenario() -> list[Event]:
        async with app.client() as client:
            await client.write_event(SynthesizeStart().event())
            for piece in ("첫 번째 문장입니다. 두 번", "째 문장입니다. 끝"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            # the compatibility event with the whole text: must not be spoken again
            await client.write_event(Synthesize(
                text="첫 번째 문장입니다. 두 번째 문장입니다. 끝").event())
            await client.write_event(SynthesizeStop().event())
            return await read_until(client, "synthesize-stopped", "error")

    events = run(scenario())
    assert events[-1].type == "synthesize-stopped"
    starts = [AudioStart.from_event(e) for e in events if e.type == "audio-start"]
    assert len(starts) == 3 == sum(e.type == "audio-stop" for e in events)
    assert len({(s.rate, s.width, s.channels) for s in starts}) == 1


def test_a_transcript_is_handled_by_the_model(app: WyomingApp) -> None:
    async def scenario() -> Event:
        async with app.client() as client:
            await client.write_event(Transcript(text="What is two plus two?",
                                                context={"conversation_id": "c1"}).event())
            return (await read_until(client, "handled", "not-handled", "error"))[-1]

    event = run(scenario())
    assert event.type == "handled", event
    handled = Handled.from_event(event)
    assert handled.text and handled.context == {"conversation_id": "c1"}


def test_describe_is_answered_while_a_generation_runs(app: WyomingApp) -> None:
    async def scenario() -> list[str]:
        arrived: list[str] = []

        async def describe() -> None:
            await _describe(app)
            arrived.append("info")

        async with app.client() as busy:
            since = app.mark()
            await busy.write_event(Transcript(
                text="Tell me a very long story about a dragon and a knight.").event())
            answer = asyncio.create_task(read_until(busy, "handled", "not-handled", "error"))
            answer.add_done_callback(lambda t: arrived.append(t.result()[-1].type))
            await app.generating(since)
            await asyncio.gather(describe(), describe(), describe())
            await answer
        return arrived

    assert run(scenario()) == ["info", "info", "info", "handled"]


def test_garbage_and_disconnects_leave_the_server_serving(app: WyomingApp,
                                                         tmp_path: Path) -> None:
    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", app.port), timeout=30) as sock:
            sock.sendall(data)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    for garbage in (b"\x00\xff\xfe not json at all\n", b"[1, 2, 3]\n",
                    b'{"type": "audio-chunk", "payload_length": 999999999}\n',
                    b'{"type": "transcript", "data": {}}\n'):
        answer = raw(garbage)  # the server answers with an error, then hangs up
        assert b'"error"' in answer.split(b"\n")[0], (garbage, answer)

    async def mid_stream() -> None:
        client = app.client()
        await client.connect()
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                            audio=b"\x00\x01" * 4000).event())
        await client.disconnect()

        client = app.client()  # and away while the model answers
        await client.connect()
        since = app.mark()
        await client.write_event(Transcript(text="Tell me a very long story.").event())
        await app.generating(since)
        await client.disconnect()

    run(mid_stream())
    wav = speak("온도", tmp_path / "next.wav")
    assert run(_transcribe(app, wav)) == "온도"
    assert run(_describe(app)).handle
    events = app.log_events()
    dropped = [e["reason"] for e in events if e.get("event") == "wyoming_client_dropped"]
    assert len(dropped) == 4 and any("999999999 bytes" in r for r in dropped)
    assert not any(e.get("event") == "wyoming_handler_failed" for e in events)


def test_a_disconnect_cancels_the_generation(app: WyomingApp) -> None:
    logged = len(app.log_events())

    async def scenario() -> None:
        client = app.client()
        await client.connect()
        since = app.mark()
        await client.write_event(Transcript(text="Tell me a very long story about a cat.",
                                            context={"conversation_id": "gone"}).event())
        await app.generating(since)
        await client.disconnect()
        async with app.client() as second:
            await second.write_event(Transcript(text="Say hi.").event())
            assert (await read_until(second, "handled", "not-handled", "error"))[-1].type == \
                "handled"

    run(scenario())
    # The story's answer, then the second's (an answer that an earlier test left cancelling
    # may come first): the story is cancelled wherever the disconnect found it, mid-answer
    # or (on a busy CPU) still on its way to the model.
    answers = [e for e in app.log_events()[logged:] if e.get("event") == "answer_ready"]
    assert len(answers) >= 2 and answers[-1]["finish_reason"] != "cancelled", answers
    story = answers[-2]
    assert story["finish_reason"] == "cancelled" and story["tokens"] < MAX_TOKENS, answers


def test_toy_mode_refusal_is_not_handled(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    # only a transcript is sent: no speech models to load (the Wyoming server still runs)
    app = WyomingApp(tmp_path, broker, voice={"kid_safe": True, "model_path": None,
                                              "tts": "none"})
    try:
        async def scenario() -> Event:
            async with app.client() as client:
                await client.write_event(Transcript(text="where can I buy a gun").event())
                return (await read_until(client, "handled", "not-handled", "error"))[-1]

        event = run(scenario())
        assert event.type == "not-handled" and NotHandled.from_event(event).text
    finally:
        app.close()
        broker.stop()


def test_zeroconf_announces_the_server(app: WyomingApp) -> None:
    registered = [e for e in app.log_events()
                  if e.get("event") in ("zeroconf_registered", "zeroconf_unavailable")]
    if registered and registered[0]["event"] == "zeroconf_unavailable":
        pytest.skip(f"no multicast here: {registered[0]['reason']}")

    async def resolve() -> AsyncServiceInfo:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo("_wyoming._tcp.local.",
                                f"appliance-test-{app.port}._wyoming._tcp.local.")
        try:
            # multicast answers: on loopback every responder shares port 5353, and a
            # unicast answer may go to another process's socket
            assert await info.async_request(zc.zeroconf, 5000, question_type=DNSQuestionType.QM)
        finally:
            await zc.async_close()
        return info

    info = run(resolve())
    assert info.port == app.port and info.parsed_addresses() == ["127.0.0.1"]


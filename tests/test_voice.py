"""Voice with the real Korean vosk model, espeak-ng speech and the real LLM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.bench.broker import LocalBroker
from appliance.config import load_settings
from appliance.config.schema import VoiceSettings
from appliance.llm import Engine
from appliance.protocol.messages import Request
from appliance.service.supervisor import Supervisor
from appliance.voice import listen as listen_module
from appliance.voice.activation import Activation, match_intent, route
from appliance.voice.audio import AudioError, read_wav
from appliance.voice.kid_safe import REFUSAL
from appliance.voice.listen import Listener
from appliance.voice.pieces import SpokenAnswer
from appliance.voice.recognizer import Heard
from tests.conftest import BASE, STORY, device_config, run_cli
from tests.services import ApplianceProcess, Broker, Peer, run_supervisor
from tests.speech import (
    FAST_WAV,
    PHRASES,
    SHORT_ANSWERS,
    korean_model,
    korean_vosk,
    piper_voice,
    sequence,
    share_korean_vosk,
    silence,
    speak,
)
from tests.voice_device import run_in_process

GRAMMAR = "[" + ", ".join(PHRASES) + "]"


def _voice_yaml(extra: str = "", tts_voice: str = "ko") -> str:
    return (f"voice:\n  enabled: true\n  model_path: {korean_model()}\n  grammar: {GRAMMAR}\n"
            f"  intents: {{멈춰: stop}}\n  tts_voice: {tts_voice}\n" + extra)


def _listen_config(tmp_path: Path, model_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "listen.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nllm:\n  model_path: {model_path}\n"
                   "  temperature: 0\n  max_tokens: 16\n  n_ctx: 512\n  n_threads: 1\n"
                   + _voice_yaml(extra))
    return cfg


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory, model_path: Path,
             engine: Engine) -> Listener:
    """``appliance listen``'s pipeline in this process, on :func:`_listen_config`'s settings.

    What the command builds (see appliance/cli/listen.py), with the shared test engine and
    the Korean model loaded once (:func:`korean_vosk`): one process for every phrase.
    """
    settings = load_settings(_listen_config(tmp_path_factory.mktemp("listen"), model_path))
    assert settings.voice.model_path == korean_model()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(listen_module, "load_model", lambda _path: korean_vosk())
        return Listener(settings, engine)


def _check_answered(body: dict[str, object], phrase: str, reply_wav: Path) -> None:
    """What ``listen --json --say`` answers for ``phrase``: heard, answered, spoken."""
    assert body["transcript"] == phrase
    assert body["answer"] and body["intent"] is None
    assert body["ms_first_token"] > 0 and body["ms_first_audio"] >= body["ms_first_token"]
    with wave.open(str(reply_wav)) as reply:
        assert reply.getnframes() > reply.getframerate() // 10  # some real speech


@pytest.mark.slow
@pytest.mark.parametrize("phrase", [p for p in PHRASES if p != "멈춰"])
def test_listen_recognizes_each_phrase_and_answers(listener: Listener, tmp_path: Path,
                                                   phrase: str) -> None:
    wav = speak(phrase, tmp_path / "in.wav", rate=None)  # 22.05 kHz: resampled on the way in
    out = tmp_path / "reply.wav"
    _check_answered(dataclasses.asdict(listener.listen(wav, out)), phrase, out)


@pytest.mark.slow
def test_listen_command_prints_the_answer_as_json_and_speaks_it(tmp_path: Path,
                                                                model_path: Path) -> None:
    wav = speak("날씨", tmp_path / "in.wav", rate=None)
    out = tmp_path / "reply.wav"
    result = run_cli("--config", str(_listen_config(tmp_path, model_path)), "listen",
                     "--wav", str(wav), "--json", "--say", "--out", str(out))
    assert result.returncode == 0, result.stderr
    _check_answered(json.loads(result.stdout), "날씨", out)


@pytest.mark.slow
def test_intent_acts_without_the_model(listener: Listener, tmp_path: Path) -> None:
    wav = speak("멈춰", tmp_path / "stop.wav")
    body = dataclasses.asdict(listener.listen(wav))
    assert body["intent"] == "stop" and body["answer"] == "" and body["ms_first_token"] is None


@pytest.mark.slow
@pytest.mark.parametrize(("setup", "message"), [
    ("missing_model", "not a vosk model"),
    ("corrupt_model", "the vosk model cannot be loaded"),
    ("not_audio", "not a WAV audio file"),
])
def test_bad_voice_inputs_are_one_line_errors(tmp_path: Path, model_path: Path, setup: str,
                                              message: str) -> None:
    wav = speak("날씨", tmp_path / "ok.wav")
    cfg = _listen_config(tmp_path, model_path)
    if setup == "missing_model":
        cfg.write_text(cfg.read_text().replace(str(korean_model()), str(tmp_path / "nope")))
    elif setup == "corrupt_model":  # the real model's files, but a damaged acoustic model
        corrupt = tmp_path / "corrupt"
        for part in korean_model().rglob("*"):
            if part.is_file():
                (corrupt / part.relative_to(korean_model())).parent.mkdir(parents=True,
                                                                         exist_ok=True)
                (corrupt / part.relative_to(korean_model())).symlink_to(part)
        (corrupt / "am" / "final.mdl").unlink()
        (corrupt / "am" / "final.mdl").write_bytes(b"\x00garbage" * 1000)
        cfg.write_text(cfg.read_text().replace(str(korean_model()), str(corrupt)))
    else:
        wav.write_bytes(b"this is not audio at all")
    result = run_cli("--config", str(cfg), "listen", "--wav", str(wav))
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("appliance:")]
    assert message in line and "Traceback" not in result.stderr


@pytest.mark.slow
def test_any_rate_and_channels_are_converted(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    speak("날씨", tmp_path / "mono.wav")
    subprocess.run(["sox", str(tmp_path / "mono.wav"), "-r", "44100", "-c", "2", str(stereo)],
                   check=True)
    pcm = read_wav(stereo)
    mono = read_wav(tmp_path / "mono.wav")
    assert abs(len(pcm) - len(mono)) <= 4  # same duration at 16 kHz mono
    with pytest.raises(AudioError, match="no such file"):
        read_wav(tmp_path / "absent.wav")


def test_wake_phrase_gate() -> None:
    now = [0.0]
    gate = Activation("wake", "hey kiosk", window_s=8, clock=lambda: now[0])
    assert gate.admit("what is the weather") is None
    assert gate.admit("hey kiosk what is the weather") == "what is the weather"
    assert gate.admit("Hey kiosk!") is None
    now[0] = 3.0
    assert gate.admit("turn on the light") == "turn on the light"
    assert gate.admit("and the radio") is None  # the window closes after one request
    assert match_intent("Stop!", {"stop": "stop"}) == "stop"
    intents = {"stop": "stop"}
    assert route(gate, "stop", intents) == ("stop", None)  # no wake phrase needed
    assert route(gate, "hey kiosk stop", intents) == ("stop", None)
    assert route(gate, "hey kiosk what time is it", intents) == (None, "what time is it")
    assert route(gate, "what time is it", intents) == (None, None)


def test_kid_filter_replaces_an_injected_sentence() -> None:
    answer = SpokenAnswer(VoiceSettings(kid_safe=True, block_list=("dragon",)), early_words=3)
    stream = ["Cats are soft", ". You could play with a g", "un at night! Dragons",
              " are big. Bye."]
    spoken = [piece for chunk in stream for piece in answer.feed(chunk)]
    spoken += list(answer.flush())
    assert spoken == ["Cats are soft.", REFUSAL, REFUSAL, "Bye."]  # whole sentences, even early


@pytest.fixture(scope="module")
def heard_wav(module_start: Callable[..., ApplianceProcess], module_broker: Broker,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApplianceProcess, Peer]]:
    """One device that hears "날씨" from a WAV and cannot play its spoken answer (hw:99).

    Its tests only read what it published (``peer`` subscribed before it started).
    """
    here = tmp_path_factory.mktemp("wav")
    wav = sequence([speak("날씨", here / "a.wav")], here / "seq.wav")
    peer = Peer(module_broker.port, [f"{BASE}/#"])
    try:
        app = module_start(SHORT_ANSWERS, root=_voice_yaml(f"  source: {wav}\n"
                                                           "  output_device: hw:99\n"),
                           **FAST_WAV)
        yield app, peer
    finally:
        peer.close()


@pytest.mark.slow
def test_run_hears_a_wav_and_answers_with_source_voice(
        heard_wav: tuple[ApplianceProcess, Peer]) -> None:
    app, peer = heard_wav
    heard = peer.wait_for(lambda m: m.topic == f"{BASE}/heard").json()
    assert heard["text"] == "날씨" and heard["source"] == "wav" and heard["ms"] >= 0
    answer = peer.wait_for(lambda m: m.topic == f"{BASE}/answer").json()
    assert answer["source"] == "voice" and answer["tokens"] > 0
    assert not (app.config.parent / "data" / "transcripts.jsonl").exists()  # none kept by default
    states = {m.json()["state"] for m in peer.seen if m.topic == f"{BASE}/state"}
    assert "listening" in states  # partial results while the phrase was being spoken


@pytest.mark.slow
def test_run_unplayable_speaker_is_an_error_and_answers_still_go_out(
        heard_wav: tuple[ApplianceProcess, Peer]) -> None:
    _, peer = heard_wav
    error = peer.wait_for(lambda m: m.topic == f"{BASE}/error"
                          and m.json()["topic"] == "voice").json()
    assert error["error"].startswith("cannot play speech on hw:99")
    assert peer.wait_for(lambda m: m.topic == f"{BASE}/answer").json()["source"] == "voice"


@pytest.mark.slow
def test_run_speaks_the_answer_with_piper(tmp_path: Path, model_path: Path, broker: Broker,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    played = tmp_path / "speaker.raw"  # ALSA's file plugin stands in for the sound card
    wav = sequence([speak("날씨", tmp_path / "a.wav")], tmp_path / "seq.wav")

    def played_out(peer: Peer) -> None:
        answer = peer.wait_for(lambda m: m.topic == f"{BASE}/answer").json()
        assert answer["source"] == "voice"
        speaking = peer.wait_for(lambda m: m.topic == f"{BASE}/state"
                                 and m.json()["state"] == "speaking")
        peer.wait_for(lambda m: m.topic == f"{BASE}/state" and m.json()["state"] != "speaking"
                      and peer.seen.index(m) > peer.seen.index(speaking))  # played out

    peer = run_in_process(tmp_path, model_path, broker.port,
                       _voice_yaml(f"  source: {wav}\n  tts: piper\n"
                                   f"  output_device: \"file:'{played}',raw\"\n",
                                   str(piper_voice())), monkeypatch, played_out)
    seconds = played.stat().st_size / (2 * 22050)  # piper's 16-bit mono at 22.05 kHz
    assert seconds > 0.5 and not [m for m in peer.seen if m.topic == f"{BASE}/error"]


@pytest.mark.slow
def test_run_wake_phrase_then_request(tmp_path: Path, model_path: Path, broker: Broker,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [speak(p, tmp_path / f"{i}.wav") for i, p in enumerate(["날씨", "안녕하세요", "온도"])]
    wav = sequence(parts, tmp_path / "seq.wav")
    answers: list[dict[str, object]] = []

    def answered(peer: Peer) -> None:
        answers.append(peer.wait_for(lambda m: m.topic == f"{BASE}/answer").json())
        peer.drain(2)

    peer = run_in_process(tmp_path, model_path, broker.port,
                       _voice_yaml(f"  source: {wav}\n  tts: none\n  activation: wake\n"
                                   "  wake_phrase: 안녕하세요\n  keep_transcripts: true\n"),
                       monkeypatch, answered)
    (answer,) = answers
    heard = [m.json()["text"] for m in peer.seen if m.topic == f"{BASE}/heard"]
    assert heard == ["날씨", "안녕하세요", "온도"]  # all heard, only the last one answered
    assert len([m for m in peer.seen if m.topic == f"{BASE}/answer"]) == 1
    assert answer["source"] == "voice"
    kept = (tmp_path / "transcripts.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in kept] == heard


@pytest.mark.slow
def test_run_missing_microphone_is_an_error_and_asks_still_work(
        start: Callable[..., ApplianceProcess], peer: Peer) -> None:
    start(SHORT_ANSWERS, root=_voice_yaml("  source: mic\n  device: hw:99\n  tts: none\n"))
    error = peer.wait_for(lambda m: m.topic == f"{BASE}/error"
                          and m.json()["topic"] == "voice").json()
    assert "microphone" in error["error"] or "arecord" in error["error"]
    peer.publish(f"{BASE}/ask", json.dumps({"id": "still", "text": "Hi"}))
    assert peer.wait_for(lambda m: m.topic == f"{BASE}/answer").json()["id"] == "still"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop intent", "talk button"])
def test_barge_in_cancels_the_running_answer(tmp_path: Path, model_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    share_korean_vosk(monkeypatch)
    factory = MockFactory()
    broker = LocalBroker(tmp_path / "broker")
    broker.start()
    quiet = silence(tmp_path / "silence.wav", 0.5)
    voice = _voice_yaml(f"  source: {quiet}\n  activation: button\n  button: 5\n")
    cfg = device_config(tmp_path, model_path, broker.port, "v1", 400,
                        f"thermal:\n  zone_path: {tmp_path / 't'}\n" + voice)
    settings = load_settings(cfg)
    peer = Peer(broker.port, ["appliance/v1/#"])

    async def interrupt(supervisor: Supervisor) -> None:
        supervisor.dispatcher.submit(Request(id="long", source="voice", text=STORY))
        await asyncio.to_thread(peer.wait_for, lambda m: m.topic == "appliance/v1/state"
                                and m.json()["state"] == "speaking")  # the first sentence
        if how == "stop intent":
            supervisor.voice.heard(Heard("멈춰", True, 1.0))
        else:
            factory.pin(5).drive_low()
        await asyncio.to_thread(peer.wait_for, lambda m: m.topic == "appliance/v1/answer")

    try:
        run_supervisor(settings, cfg, factory, interrupt)
        answer = peer.wait_for(lambda m: m.topic == "appliance/v1/answer").json()
        assert answer["id"] == "long" and answer["finish_reason"] == "cancelled"
        assert answer["source"] == "voice" and answer["tokens"] < 400
    finally:
        peer.close()
        broker.stop()
        factory.reset()

"""Speech out: pieces of a streamed answer, espeak-ng and piper voices, the catalog voice."""

from __future__ import annotations

import json
import queue
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from appliance.config import load_settings
from appliance.voice.audio import read_wav
from appliance.voice.pieces import SentenceSplitter, for_speech
from appliance.voice.recognizer import (
    SETTLE_S,
    Heard,
    Recognizer,
    SilenceTracker,
)
from appliance.voice.service import Loudspeaker
from appliance.voice.tts import Espeak, Piper, SpeechError
from tests.conftest import run_cli
from tests.http_server import Served, serve
from tests.speech import PHRASES, korean_model, korean_vosk, piper_voice, sequence, speak


def _pieces(stream: list[str], early_words: int) -> list[str]:
    splitter = SentenceSplitter(early_words)
    return [p for delta in stream for p in splitter.feed(delta)] + list(splitter.flush())


def test_first_piece_is_early_then_whole_sentences() -> None:
    stream = ["The", " weather", " today", " is", " sunny", ". It", " is", " warm. Bye", "."]
    assert _pieces(stream, 3) == ["The weather today", "is sunny.", "It is warm.", "Bye."]
    assert _pieces(stream, 0) == ["The weather today is sunny.", "It is warm.", "Bye."]
    assert _pieces(["Well,", " I", " think", " so."], 3) == ["Well,", "I think so."]
    assert _pieces(["Yes. It", " is."], 3) == ["Yes.", "It is."]  # a whole sentence wins
    assert _pieces(["It costs 3", ".5 yen", ".\nNext line"], 0) == [
        "It costs 3.5 yen.", "Next line"]
    assert for_speech("**Bold** and `code`") == "Bold and code"


@pytest.mark.slow
def test_espeak_and_piper_synthesize_pcm() -> None:
    said = Espeak("en").synthesize("Hello there.")
    voice = Piper(piper_voice())
    spoken = voice.synthesize("Hello there. How are you?")
    assert said.rate == 22050 and said.seconds > 0.3
    assert spoken.rate == 22050 and 1.0 < spoken.seconds < 5.0
    assert max(abs(int.from_bytes(spoken.pcm[i:i + 2], "little", signed=True))
               for i in range(0, len(spoken.pcm), 2)) > 1000  # sound, not silence


@pytest.mark.slow
def test_broken_voices_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "bad.onnx.json").write_text(piper_voice().with_suffix(".onnx.json").read_text())
    with pytest.raises(SpeechError, match="not a usable piper voice") as info:
        Piper(bad)
    assert "\n" not in str(info.value)
    (tmp_path / "bad.onnx.json").unlink()
    with pytest.raises(SpeechError, match=r"not a usable piper voice.*No such file"):
        Piper(bad)


@pytest.mark.slow
def test_piper_voice_pulled_from_the_catalog_speaks_the_answer(tmp_path: Path,
                                                              model_path: Path) -> None:
    onnx = piper_voice()
    files = {"/joe.onnx": onnx.read_bytes(), "/joe.onnx.json": onnx.with_suffix(
        ".onnx.json").read_bytes()}
    shipped = yaml.safe_load(Path("models/catalog.yaml").read_text())["models"]
    entry = {**shipped["piper-en-us-joe-medium"]}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\nllm:\n  model_path: {model_path}\n  temperature: 0\n"
        f"  max_tokens: 16\n  n_ctx: 512\nvoice:\n  enabled: true\n"
        f"  model_path: {korean_model()}\n  grammar: [날씨, 온도]\n  tts: piper\n"
        "  tts_voice: joe\nmodels:\n  allow_unsigned_site_catalog: true\n")
    catalog = tmp_path / "catalog.yaml"
    with serve(Served(b"", files=files)) as url:
        entry["url"] = url.rsplit("/", 1)[0] + "/joe.onnx"
        catalog.write_text(yaml.safe_dump({"models": {"joe": entry}}))
        env = {"APPLIANCE_CATALOG": str(catalog)}
        missing = run_cli("--config", str(cfg), "config", "check", env=env)
        assert missing.returncode == 2
        assert f"{cfg}:12: voice.tts_voice:" in missing.stderr
        assert "appliance models pull joe" in missing.stderr
        pulled = run_cli("--config", str(cfg), "models", "pull", "joe", env=env)
        assert pulled.returncode == 0, pulled.stderr
    voices = tmp_path / "data" / "models"
    assert (voices / "en_US-joe-medium.onnx.json").read_bytes() == files["/joe.onnx.json"]
    out = tmp_path / "reply.wav"
    heard = speak("날씨", tmp_path / "in.wav")
    result = run_cli("--config", str(cfg), "listen", "--wav", str(heard), "--json", "--say",
                     "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["transcript"] == "날씨" and body["answer"]
    assert body["ms_first_audio"] >= body["ms_first_piece"] >= body["ms_first_token"] > 0
    with wave.open(str(out)) as reply:
        assert reply.getframerate() == 22050 and reply.getnframes() > 22050 // 2
    (voices / "en_US-joe-medium.onnx.json").write_text("{}")
    check = run_cli("--config", str(cfg), "models", "verify", "joe", env=env)
    assert check.returncode == 1 and "MISMATCH" in check.stderr and ".onnx.json" in check.stderr


@pytest.mark.slow
def test_end_silence_ends_an_utterance_sooner_than_vosk(tmp_path: Path) -> None:
    pcm = read_wav(sequence([speak("날씨", tmp_path / "a.wav")], tmp_path / "seq.wav", gap_s=2.5))
    model = korean_vosk()
    waited = {}
    for end_silence_s in (10.0, 0.3):  # 10 s: vosk's own endpoint alone
        recognizer = Recognizer(model, PHRASES, end_silence_s=end_silence_s)
        finals = [h for i in range(0, len(pcm), 3200) for h in recognizer.feed(pcm[i:i + 3200])
                  if h.final]
        assert [h.text for h in finals] == ["날씨"]
        assert finals[0].speech_end_s is not None
        waited[end_silence_s] = finals[0].end_s - finals[0].speech_end_s
    assert waited[0.3] < 0.3 + 0.25 < waited[10.0]  # quiet + a chunk, before vosk's endpoint


def _results(recognizer: Recognizer, pcm: bytes) -> list[Heard]:
    return [h for i in range(0, len(pcm), 3200) for h in recognizer.feed(pcm[i:i + 3200])]


@pytest.mark.slow
def test_the_utterance_is_settled_early_in_the_quiet_and_ends_at_end_silence(
        tmp_path: Path) -> None:
    """Vosk's final words come as a partial at SETTLE_S, so prefill can read them all.

    Spoken fast, these ten words are misheard, and vosk's last partial and its
    final differ in the last word: the partial that settles them is the final.
    """
    utterance = "안녕하세요 날씨 온도 음악 틀어 안녕하세요 날씨 온도 음악 틀어"
    pcm = read_wav(sequence([speak(utterance, tmp_path / "a.wav", words_per_minute=175)],
                            tmp_path / "s.wav", gap_s=1.5))
    results = _results(Recognizer(korean_vosk(), PHRASES, end_silence_s=0.7), pcm)
    (final,) = [h for h in results if h.final]
    settled = [h for h in results if not h.final][-1]
    assert settled.text == final.text  # nothing is left to read once it ends
    assert final.end_s - settled.end_s >= 0.7 - SETTLE_S - 0.11  # and it waited the rest


@pytest.mark.slow
def test_speech_that_resumes_after_the_settle_point_continues_the_utterance(
        tmp_path: Path) -> None:
    hello, weather = (read_wav(speak(t, tmp_path / f"{i}.wav"))
                      for i, t in enumerate(("안녕하세요", "날씨")))
    pause = bytes(int(16000 * (SETTLE_S + 0.2)) * 2)  # past the settle point, short of the end
    results = _results(Recognizer(korean_vosk(), PHRASES, end_silence_s=0.9),
                       hello + pause + weather + bytes(32000 * 2))
    assert [h.text for h in results if h.final] == ["안녕하세요 날씨"]
    assert "안녕하세요" in [h.text for h in results if not h.final]  # settled, then carried on


def test_silence_tracker_learns_the_noise_floor() -> None:
    rng = np.random.default_rng(7)

    def chunk(amplitude: float) -> bytes:
        return (rng.normal(0, amplitude, 1600)).astype(np.int16).tobytes()

    tracker = SilenceTracker()
    for _ in range(120):
        tracker.feed(chunk(300))  # a fan at -41 dBFS is learned as the room's floor
    tracker.reset()
    for _ in range(20):
        tracker.feed(chunk(300))
    assert not tracker.heard_speech
    tracker.feed(chunk(6000))
    assert tracker.heard_speech and tracker.quiet_s == 0
    for _ in range(5):
        tracker.feed(chunk(300))
    assert tracker.quiet_s == pytest.approx(0.5)
    tracker.reset()
    assert not tracker.heard_speech and tracker.quiet_s == 0


@pytest.mark.slow
def test_settings_for_piper_speech(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("voice:\n  tts: piper\n  early_words: 0\n  end_silence_s: 0.3\n"
                   "  output_device: plughw:1,0\n")
    voice = load_settings(cfg).voice
    assert (voice.tts, voice.tts_voice, voice.early_words) == ("piper", None, 0)
    assert voice.output_device == "plughw:1,0" and voice.end_silence_s == 0.3
    cfg.write_text("voice:\n  early_words: -1\n")
    result = run_cli("--config", str(cfg), "config", "check")
    assert result.returncode == 2 and f"{cfg}:2: voice.early_words:" in result.stderr


@pytest.mark.slow
def test_speaker_plays_through_aplay_and_volume_steps_scale_it(tmp_path: Path) -> None:
    played = tmp_path / "speaker.raw"  # ALSA's file plugin stands in for the sound card
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"voice:\n  tts_voice: en\n  output_device: \"file:'{played}',raw\"\n")
    events: queue.Queue[bool] = queue.Queue()
    speaker = Loudspeaker(load_settings(cfg), events.put)
    levels = []
    try:
        for step in (0.0, -0.4):
            assert speaker.change_volume(step) == pytest.approx(0.8 + step)
            speaker.say("Hello there. How are you?")
            assert [events.get(timeout=30), events.get(timeout=30)] == [True, False]
            samples = np.frombuffer(played.read_bytes(), dtype=np.int16).astype(np.float64)
            assert len(samples) / 22050 > 1.0
            levels.append(np.sqrt(np.mean(samples ** 2)))
    finally:
        speaker.close()
    assert levels[1] / levels[0] == pytest.approx(0.4 / 0.8, abs=0.01)
    assert speaker.last_answer == "Hello there. How are you?"


@pytest.mark.slow
def test_unknown_intent_action_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("voice:\n  intents:\n    louder: volume_upp\n")
    result = run_cli("--config", str(cfg), "config", "check")
    assert result.returncode == 2
    assert f"{cfg}:3: voice.intents.louder: unknown action 'volume_upp'" in result.stderr

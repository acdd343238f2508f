"""Test speech for the voice benches: a text spoken by espeak-ng, as the recognizer hears it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from appliance.voice.audio import RATE


def spoken_wav(text: str, voice: str, out: Path, pad_s: float) -> Path:
    """``text`` spoken into ``out`` (16 kHz mono WAV), then ``pad_s`` of silence.

    The silence is what a microphone would go on hearing after the speaker stops.
    """
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), "--", text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out),
                    "pad", "0", str(pad_s)], check=True)
    return out

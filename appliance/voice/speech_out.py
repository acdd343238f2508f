"""Speech out: sentences as they are generated, spoken (or written) with espeak-ng."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from appliance.errors import ApplianceError

_SENTENCE = re.compile(r"(.+?[.!?。！？])(\s+|$)", re.S)


class SpeechError(ApplianceError):
    """Text cannot be spoken."""


class SentenceSplitter:
    """Collects streamed text and hands out whole sentences as soon as they end."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, delta: str) -> Iterator[str]:
        """Add text; yields the sentences it completed."""
        self._buffer += delta
        while (match := _SENTENCE.match(self._buffer)) and match.group(2):
            yield match.group(1).strip()
            self._buffer = self._buffer[match.end():]

    def flush(self) -> Iterator[str]:
        """The rest, at the end of the answer."""
        rest, self._buffer = self._buffer.strip(), ""
        if rest:
            yield rest


def espeak_command(text: str, voice: str, out: Path | None = None) -> list[str]:
    """The espeak-ng command that speaks ``text`` (to ``out`` as WAV when given)."""
    if shutil.which("espeak-ng") is None:
        raise SpeechError("espeak-ng is not installed (apt-get install espeak-ng)")
    return ["espeak-ng", "-v", voice, *(["-w", str(out)] if out else []), "--", text]


def synthesize(text: str, voice: str, out: Path) -> Path:
    """Write ``text`` as speech to the WAV file ``out``."""
    done = subprocess.run(espeak_command(text, voice, out), capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0 or not out.exists():
        raise SpeechError(f"espeak-ng failed: {done.stderr.strip() or done.returncode}")
    return out


def join_wavs(parts: list[Path], out: Path) -> Path:
    """Concatenate WAV files with sox."""
    if len(parts) == 1:
        shutil.copyfile(parts[0], out)
        return out
    done = subprocess.run(["sox", *map(str, parts), str(out)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SpeechError(f"sox failed: {done.stderr.strip()}")
    return out

"""Text to speech: espeak-ng or a piper voice, both giving 16-bit mono PCM.

A synthesizer turns one piece of text into :class:`Audio`; where the audio
goes (a speaker through :mod:`appliance.voice.playback`, or a WAV file) is not
its business. ``espeak-ng`` is Debian's and needs nothing else. ``piper``
needs the ``piper-tts`` package (``pip install 'appliance[piper]'``) and a
voice from the catalog, checked against its sha256 like every model.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.catalog import CatalogEntry, catalog_for, lookup
from appliance.config.schema import Settings, VoiceSettings
from appliance.errors import ApplianceError, CatalogError, ConfigError

DEFAULT_VOICES = {"espeak-ng": "en", "piper": "piper-en-us-joe-medium"}
"""The voice of each engine when ``voice.tts_voice`` is not set."""


def voice_name(voice: VoiceSettings) -> str:
    """The voice ``voice.tts`` speaks with: ``voice.tts_voice``, else the engine's default."""
    return voice.tts_voice or DEFAULT_VOICES[voice.tts]


class SpeechError(ApplianceError):
    """Text cannot be spoken."""


@dataclass(frozen=True)
class Audio:
    """Synthesized speech: 16-bit little-endian mono PCM at ``rate`` Hz."""

    pcm: bytes
    rate: int

    @property
    def seconds(self) -> float:
        """How long it plays."""
        return len(self.pcm) / (2 * self.rate)


class Synthesizer(Protocol):
    """Speaks one piece of text at a time."""

    def synthesize(self, text: str) -> Audio:
        """``text`` as speech."""


class Espeak:
    """espeak-ng, one process per piece; ``voice`` is an espeak-ng voice such as ``en``, ``ko``."""

    def __init__(self, voice: str) -> None:
        if shutil.which("espeak-ng") is None:
            raise SpeechError("espeak-ng is not installed (apt-get install espeak-ng)")
        self.voice = voice

    def synthesize(self, text: str) -> Audio:
        """Run ``espeak-ng --stdout`` and read the WAV it writes."""
        done = subprocess.run(["espeak-ng", "-v", self.voice, "--stdout", "--", text],
                              capture_output=True, timeout=60, check=False)
        if done.returncode != 0 or not done.stdout.startswith(b"RIFF"):
            problem = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise SpeechError(f"espeak-ng -v {self.voice}: {problem}")
        with wave.open(io.BytesIO(done.stdout)) as wav:
            # espeak-ng streams, so its header claims the largest length: read what is there
            return Audio(wav.readframes(wav.getnframes()), wav.getframerate())


def piper_settings(model: Path) -> Path:
    """A piper voice's settings file: ``<voice>.onnx.json`` beside its ``.onnx``."""
    return model.with_name(model.name + ".json")


class Piper:
    """A piper voice (``.onnx`` with its ``.onnx.json`` beside it), run by onnxruntime.

    ``threads`` caps onnxruntime's threads: speech is synthesized while
    llama.cpp is still generating on every core, and more threads would only
    take turns with it.
    """

    def __init__(self, model: Path, threads: int = 1) -> None:
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError:
            raise SpeechError("voice.tts is piper, but piper-tts is not installed; run: "
                              "pip install 'appliance[piper]'") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        try:
            config: Any = json.loads(piper_settings(model).read_text("utf-8"))
            self._voice = PiperVoice(
                session=onnxruntime.InferenceSession(str(model), sess_options=options,
                                                     providers=["CPUExecutionProvider"]),
                config=PiperConfig.from_dict(config))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpeechError(f"{model}: not a usable piper voice ({exc})") from None
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            raise SpeechError(f"{model}: not a usable piper voice "
                              f"({str(exc).splitlines()[0]})") from None
        self.rate = self._voice.config.sample_rate

    def synthesize(self, text: str) -> Audio:
        """Phonemize and synthesize, sentence by sentence, into one piece of audio."""
        return Audio(b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(text)),
                     self.rate)


def _piper_model(settings: Settings, voice: str) -> Path:
    """The ``.onnx`` that ``voice`` names: a catalog voice or a path."""
    key = "voice.tts_voice" if "voice.tts_voice" in settings.lines else "voice.tts"

    def fail(problem: str) -> ConfigError:
        return ConfigError(problem, file=settings.source, line=settings.line_of(key), key=key)

    if voice.endswith(".onnx"):
        path = Path(voice).expanduser()
        entry: CatalogEntry | None = None
    else:
        try:
            entry = lookup(voice, catalog_for(settings))
            path = entry.location(settings.models_dir)
        except CatalogError as exc:
            raise fail(str(exc)) from None
        if entry.kind != "piper":
            raise fail(f"{voice!r} is a {entry.kind} model, not a piper voice")
    for needed in (path, piper_settings(path)):
        if not needed.is_file():
            fix = f"run: appliance models pull {entry.name}" if entry else "give an .onnx path"
            raise fail(f"piper voice file {needed} is missing; {fix}")
    return path


def check_tts(settings: Settings) -> None:
    """Refuse a TTS setup that cannot work, as a :class:`ConfigError` at its config line."""
    voice = settings.voice
    if not voice.enabled or voice.tts != "piper":
        return
    _piper_model(settings, voice_name(voice))
    if importlib.util.find_spec("piper") is None:
        raise ConfigError("piper-tts is not installed; run: pip install 'appliance[piper]'",
                          file=settings.source, line=settings.line_of("voice.tts"),
                          key="voice.tts")


def load_synthesizer(settings: Settings) -> Synthesizer:
    """The synthesizer ``settings.voice`` asks for (``tts: none`` has none: do not call)."""
    voice = settings.voice
    if voice.tts == "piper":
        return Piper(_piper_model(settings, voice_name(voice)))
    return Espeak(voice_name(voice))


def write_wav(parts: list[Audio], out: Path) -> Path:
    """Write pieces of audio, one after another, as one WAV file."""
    if not parts:
        raise SpeechError("nothing was spoken")
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(parts[0].rate)
        for part in parts:
            wav.writeframes(part.pcm)
    return out

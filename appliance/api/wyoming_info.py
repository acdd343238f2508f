"""The Wyoming ``info`` event: what this appliance offers Home Assistant.

* ``asr``: our vosk model and its language (and the grammar it is held to);
* ``tts``: our voice (espeak-ng or piper) and the rate it speaks at;
* ``handle``: our model, with its manuals when configured (and actions when
  ``api.wyoming.actions`` lets a transcript act), in the
  languages of our speech and English. (Home Assistant 2026 reads an empty
  list as "any language", but 2025.4 as "none", and then offers the agent to
  no pipeline.)

Every program is ``installed: true`` (Home Assistant adds entities only for
installed programs). Fields newer than a client's library are ignored by it,
so the same event serves wyoming 1.5 (Home Assistant 2025.4) and 1.10.
"""

from __future__ import annotations

import importlib.metadata

from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
)

import appliance
from appliance.api.speech import Speech
from appliance.config import Settings

VOSK = Attribution(name="Alpha Cephei", url="https://alphacephei.com/vosk/")
TTS = {"espeak-ng": Attribution(name="eSpeak NG", url="https://github.com/espeak-ng/espeak-ng"),
       "piper": Attribution(name="Rhasspy", url="https://github.com/rhasspy/piper")}
APPLIANCE = Attribution(name="appliance", url="")
MAX_LISTED_PHRASES = 20


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_info(settings: Settings, speech: Speech, model: str) -> Info:
    """The ``info`` for the parts that work right now."""
    info = Info(handle=[_handle(settings, model, _handle_languages(speech))])
    if speech.has_asr and speech.model_path is not None:
        info.asr = [_asr(settings, speech)]
    if speech.has_tts and speech.voice is not None:
        info.tts = [_tts(settings, speech)]
    return info


def _asr(settings: Settings, speech: Speech) -> AsrProgram:
    assert speech.model_path is not None and speech.asr_language is not None
    grammar = settings.voice.grammar
    about = "vosk speech recognition, offline"
    if grammar:
        listed = ", ".join(grammar[:MAX_LISTED_PHRASES])
        more = f" and {len(grammar) - MAX_LISTED_PHRASES} more" if len(
            grammar) > MAX_LISTED_PHRASES else ""
        about += f"; recognizes only these phrases: {listed}{more}"
    name = speech.model_path.name
    if name == "model":  # a model shipped inside a package: its package's name says more
        name = speech.model_path.parent.name
    return AsrProgram(
        name="vosk", attribution=VOSK, installed=True, description=about,
        version=_version("vosk"),
        models=[AsrModel(name=name, attribution=VOSK, installed=True, description=about,
                         version=None, languages=[speech.asr_language])],
        supports_transcript_streaming=False)


def _tts(settings: Settings, speech: Speech) -> TtsProgram:
    engine = settings.voice.tts
    attribution = TTS[engine]
    about = f"{engine} voice {speech.voice}, {speech.rate} Hz 16-bit mono"
    return TtsProgram(
        name=engine, attribution=attribution, installed=True, description=about,
        version=_version("piper-tts") if engine == "piper" else None,
        voices=[TtsVoice(name=str(speech.voice), attribution=attribution, installed=True,
                         description=about, version=None, languages=[speech.tts_language])],
        supports_synthesize_streaming=True)


def _handle_languages(speech: Speech) -> list[str]:
    """The speech languages, each also without its region, and English."""
    found = [speech.asr_language if speech.model_path is not None else None,
             speech.tts_language if speech.voice is not None else None, "en"]
    languages = [tag for language in found if language
                 for tag in (language, language.split("-")[0])]
    return list(dict.fromkeys(languages))


def _handle(settings: Settings, model: str, languages: list[str]) -> HandleProgram:
    wyoming = settings.api.wyoming
    acts = bool(settings.actions) and wyoming is not None and wyoming.actions
    extras = [what for what, on in (("actions", acts),
                                    ("its manuals", settings.knowledge.enabled)) if on]
    about = f"the local model {model}" + (f", with {' and '.join(extras)}" if extras else "")
    return HandleProgram(
        name="appliance", attribution=APPLIANCE, installed=True, description=about,
        version=appliance.__version__,
        models=[HandleModel(name=model, attribution=APPLIANCE, installed=True,
                            description=about, version=None, languages=languages)],
        supports_handled_streaming=False, supports_home_control=acts)

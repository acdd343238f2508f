"""The wake word heard by microWakeWord (``voice.wake.engine: micro``), before vosk runs.

microWakeWord is what Home Assistant's voice hardware runs: a small streaming
TFLite model per wake word, through ``pymicro-wakeword``, whose wheel ships
``okay_nabu``, ``hey_jarvis``, ``alexa`` and ``hey_mycroft``. It costs a small
fraction of vosk on every sound, so the appliance can wait for its name all
day and start vosk only once it is called. ``voice.wake.model`` is one of
those names or the ``.json`` of another microWakeWord model (its ``.tflite``
beside it); the model's own phrase (``Okay Nabu``) is then the wake phrase.
"""

from __future__ import annotations

import json
from pathlib import Path

from appliance.config.schema import Settings, WakeSettings
from appliance.errors import ApplianceError, ConfigError

BUILTIN_MODELS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
"""The models inside the ``pymicro-wakeword`` wheel."""


class WakeWordError(ApplianceError):
    """The wake word model is unknown or cannot be loaded."""


def _model_problem(model: str) -> str | None:
    """Why ``model`` cannot be a wake word model, or ``None``."""
    if model in BUILTIN_MODELS:
        return None
    if not model.endswith(".json"):
        return (f"unknown wake word model {model!r}; expected one of "
                f"{', '.join(BUILTIN_MODELS)} or a microWakeWord .json file")
    path = Path(model).expanduser()
    try:
        config = json.loads(path.read_text("utf-8"))
        tflite = path.parent / config["model"]
        float(config["micro"]["probability_cutoff"])
        int(config["micro"]["sliding_window_size"])
    except FileNotFoundError:
        return f"{path}: no such file"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return f"{path}: not a microWakeWord model description ({type(exc).__name__}: {exc})"
    return None if tflite.is_file() else f"{path}: its model {tflite} is missing"


def check_wake(settings: Settings) -> None:
    """Refuse a wake word model that cannot load, as a :class:`ConfigError` at its line.

    Checked whenever ``voice.wake.engine`` is ``micro``, as ``bench voice``
    uses it in any activation mode.
    """
    voice = settings.voice
    if voice.wake.engine != "micro":
        return
    problem = _model_problem(voice.wake.model)
    if problem is not None:
        raise ConfigError(problem, file=settings.source,
                          line=settings.line_of("voice.wake.model"), key="voice.wake.model")


class WakeWord:
    """microWakeWord on one audio stream: :meth:`feed` says when its phrase was just heard.

    One feature extractor and one model per stream: both keep state across
    chunks. After a detection both start over, so one utterance of the wake
    word wakes once.
    """

    def __init__(self, settings: WakeSettings) -> None:
        # TFLite's C library is loaded only where a wake word engine is used.
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        problem = _model_problem(settings.model)
        if problem is not None:
            raise WakeWordError(f"voice.wake.model: {problem}")
        try:
            self._model = (MicroWakeWord.from_builtin(Model(settings.model))
                           if settings.model in BUILTIN_MODELS
                           else MicroWakeWord.from_config(Path(settings.model).expanduser()))
        except (OSError, ValueError, RuntimeError) as exc:
            raise WakeWordError(f"voice.wake.model: {settings.model}: the wake word model "
                                f"cannot be loaded ({exc})") from None
        self._features = MicroWakeWordFeatures()
        self.phrase: str = self._model.wake_word
        self.threshold: float = (settings.threshold if settings.threshold is not None
                                 else self._model.probability_cutoff)

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk of 16 kHz 16-bit mono PCM; whether the wake word ended in it."""
        heard = False
        for features in self._features.process_streaming(chunk):
            probability = self._model.process_streaming_prob(features)
            if probability is not None and probability > self.threshold:
                heard = True
        if heard:
            self.reset()
        return heard

    def reset(self) -> None:
        """Forget what was heard (the model's state, the features in progress)."""
        self._model.reset()
        self._features.reset()

    def close(self) -> None:
        """Free the model."""
        self._model.close()

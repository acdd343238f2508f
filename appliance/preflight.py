"""The start-up checks: what ``appliance run`` refuses to start with.

``run`` makes them before anything starts and ``config check`` makes the same
ones, through this one function, so that a config that checks clean also runs.
"""

from __future__ import annotations

from appliance.catalog import ResolvedModel, resolve_llm
from appliance.config.schema import Settings
from appliance.config.secrets import read_api_key, read_api_token, read_password
from appliance.errors import ConfigError, ModelError, ResourceError
from appliance.hardware import parallel_sequences
from appliance.llm.adapter_files import check_adapters
from appliance.llm.gguf import check_model_file
from appliance.llm.memory import check_fits
from appliance.voice.tts import check_tts
from appliance.voice.wake import check_wake


def preflight(settings: Settings) -> ResolvedModel:
    """Check everything the service needs from its config, and return the model to load.

    Raises :class:`~appliance.errors.ConfigError` (exit 2, at the key's line) for
    a model that is missing or not a whole GGUF file (empty, truncated, another
    format), a LoRA adapter that does not fit it, a piper voice or wake word
    model that is not there, or an MQTT password or API key that cannot be read;
    :class:`~appliance.errors.ResourceError` (exit 1) when the model and its context
    cannot fit in this machine's memory.
    """
    model = resolve_llm(settings)
    key = "llm.model_path" if settings.llm.model_path is not None else "llm.model"
    try:
        check_model_file(model.path)
        check_fits(model.path, settings.llm.n_ctx, parallel_sequences(settings.llm.parallel))
    except ResourceError:
        raise
    except ModelError as exc:
        raise ConfigError(str(exc), file=settings.source, line=settings.line_of(key),
                          key=key) from None
    check_adapters(settings, model.path)  # each LoRA adapter fits the model
    check_tts(settings)
    check_wake(settings)
    read_password(settings)
    read_api_key(settings)
    read_api_token(settings)
    return model

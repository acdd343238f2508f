"""The typed, frozen settings that the rest of the appliance reads.

Each section of ``config.yaml`` is one dataclass here. A field's type is what
the loader accepts, its default is what an absent key means, and its metadata
(:func:`bounds`, :data:`EXISTING`) adds the checks a type cannot express.
Lists become tuples so that settings stay immutable once loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


def bounds(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """Field metadata: the inclusive range a number must lie in."""
    return {"low": low, "high": high}


EXISTING: dict[str, Any] = {"exists": True}
"""Field metadata: the path must name an existing file or directory."""


class Secret:
    """A value that must never be printed or logged; ``str()`` and ``repr()`` mask it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it (a connect call)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


DEFAULT_SYSTEM_PROMPT = (
    "You are the voice of a small offline device. Answer in one to three short, "
    "plain sentences. If you do not know, say so."
)


@dataclass(frozen=True)
class LlmSettings:
    """The local language model and how it generates."""

    model: str | None = "llama-3.2-3b-instruct-q4_k_m"
    model_path: Path | None = field(default=None, metadata=EXISTING)
    n_ctx: int = field(default=2048, metadata=bounds(256, 131072))
    n_threads: int | None = field(default=None, metadata=bounds(1, 256))
    n_threads_batch: int | None = field(default=None, metadata=bounds(1, 256))
    n_batch: int = field(default=256, metadata=bounds(8, 8192))
    max_tokens: int = field(default=256, metadata=bounds(1, 32768))
    temperature: float = field(default=0.6, metadata=bounds(0.0, 2.0))
    top_p: float = field(default=0.95, metadata=bounds(0.0, 1.0))
    top_k: int = field(default=40, metadata=bounds(0, 1000))
    seed: int = field(default=42, metadata=bounds(0, 2**31 - 1))
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prefix_cache_entries: int = field(default=2, metadata=bounds(0, 16))
    stream_interval_ms: int = field(default=100, metadata=bounds(0, 5000))


@dataclass(frozen=True)
class TlsSettings:
    """TLS towards the broker; all paths are PEM files."""

    ca_file: Path | None = field(default=None, metadata=EXISTING)
    cert_file: Path | None = field(default=None, metadata=EXISTING)
    key_file: Path | None = field(default=None, metadata=EXISTING)


@dataclass(frozen=True)
class DiscoverySettings:
    """Home Assistant MQTT discovery."""

    enabled: bool = True
    prefix: str = "homeassistant"


@dataclass(frozen=True)
class MqttSettings:
    """The MQTT bridge to the site's broker."""

    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=bounds(1, 65535))
    base_topic: str = "appliance/{device_id}"
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = field(default=None, metadata=EXISTING)
    password_env: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: int = field(default=30, metadata=bounds(5, 3600))
    session_expiry_s: int = field(default=86400, metadata=bounds(60, 2**32 - 1))
    max_payload_bytes: int = field(default=4096, metadata=bounds(64, 1 << 20))
    stream_answers: bool = True
    queue_size: int = field(default=32, metadata=bounds(1, 10000))
    ask_rate_per_min: int = field(default=30, metadata=bounds(1, 100000))
    discovery: DiscoverySettings = DiscoverySettings()


@dataclass(frozen=True)
class ThermalLevel:
    """One row of the thermal policy: from ``from_c`` upwards these limits hold.

    ``max_tokens``: the answer budget (``null``: ``llm.max_tokens``; 0: no
    generation, a fixed "cooling down" reply). ``brief`` adds a brief-answer
    instruction to the system prompt, ``defer_rules`` holds sensor rules back
    until it is cooler (kept, not dropped), ``pause_s`` waits between generations.
    """

    name: str
    from_c: float = field(metadata=bounds(-40.0, 150.0))
    max_tokens: int | None = field(default=None, metadata=bounds(0, 32768))
    brief: bool = False
    defer_rules: bool = False
    pause_s: float = field(default=0.0, metadata=bounds(0.0, 600.0))

    def budget(self, llm_max_tokens: int) -> int:
        """The answer budget at this level, given ``llm.max_tokens``."""
        return self.max_tokens if self.max_tokens is not None else llm_max_tokens


DEFAULT_THERMAL_LEVELS = (
    ThermalLevel("normal", 0.0),
    ThermalLevel("warm", 70.0, 160),
    ThermalLevel("hot", 75.0, 96, brief=True),
    ThermalLevel("critical", 80.0, 48, brief=True, defer_rules=True),
    ThermalLevel("emergency", 85.0, 0, defer_rules=True),
)


@dataclass(frozen=True)
class ThermalSettings:
    """The thermal watchdog that shortens generation as the SoC heats up."""

    zone_path: Path = Path("/sys/class/thermal/thermal_zone0/temp")
    interval_s: float = field(default=1.0, metadata=bounds(0.05, 60.0))
    hysteresis_c: float = field(default=3.0, metadata=bounds(0.0, 20.0))
    levels: tuple[ThermalLevel, ...] = DEFAULT_THERMAL_LEVELS
    # After this long without a reading the last level is no longer trusted: warm is assumed.
    stale_after_s: float = field(default=30.0, metadata=bounds(1.0, 3600.0))
    vcgencmd: str = "vcgencmd"
    vcgencmd_every_s: float = field(default=10.0, metadata=bounds(1.0, 3600.0))


INTENT_ACTIONS = ("stop", "repeat", "volume_up", "volume_down")
"""What a ``voice.intents`` phrase can do without the model."""


@dataclass(frozen=True)
class VoiceSettings:
    """Speech in (vosk) and speech out (TTS)."""

    enabled: bool = False
    model_path: Path | None = None
    source: str = "mic"
    device: str | None = None
    activation: Literal["button", "wake", "always"] = "always"
    wake_phrase: str = "hey kiosk"
    wake_window_s: float = field(default=8.0, metadata=bounds(1.0, 120.0))
    button: str | int | None = None
    grammar: tuple[str, ...] = ()
    intents: Mapping[str, str] = field(default_factory=dict)
    max_utterance_s: float = field(default=15.0, metadata=bounds(1.0, 120.0))
    end_silence_s: float = field(default=0.7, metadata=bounds(0.1, 10.0))
    tts: Literal["espeak-ng", "piper", "none"] = "espeak-ng"
    # espeak-ng: a voice such as en or ko; piper: a catalog voice or an .onnx path
    tts_voice: str | None = None
    output_device: str | None = None
    early_words: int = field(default=3, metadata=bounds(0, 50))
    volume: float = field(default=0.8, metadata=bounds(0.0, 1.0))
    kid_safe: bool = False
    block_list: tuple[str, ...] = ()
    keep_transcripts: bool = False


@dataclass(frozen=True)
class GpioInput:
    """A digital input that publishes ``<base>/event/<name>``."""

    name: str
    pin: str | int
    kind: Literal["button", "motion", "digital"] = "button"
    pull_up: bool = True


STATE_LED_NAMES = ("listening", "thinking", "speaking", "error")
"""What ``gpio.state_leds`` can show, one LED each."""


@dataclass(frozen=True)
class GpioSettings:
    """Buttons, sensors, LEDs and the fan, through gpiozero."""

    enabled: bool = False
    inputs: tuple[GpioInput, ...] = ()
    status_led: str | int | None = None
    fan: str | int | None = None
    fan_on_c: float = field(default=65.0, metadata=bounds(0.0, 120.0))
    fan_off_c: float = field(default=55.0, metadata=bounds(0.0, 120.0))
    buzzer: str | int | None = None
    state_leds: Mapping[str, str | int] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """A sensor rule: when an event on ``source`` meets ``when``, ask the model ``prompt``."""

    name: str
    source: str
    prompt: str
    when: str | None = None
    publish: str | None = None
    min_interval_s: float = field(default=60.0, metadata=bounds(0.0, 86400.0))


@dataclass(frozen=True)
class LogSettings:
    """Logging: level and rendering (``auto`` picks JSON off a terminal or under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class Settings:
    """The whole configuration, as loaded from one YAML file."""

    device_id: str = ""
    data_dir: Path = Path("/var/lib/appliance")
    llm: LlmSettings = LlmSettings()
    mqtt: MqttSettings = MqttSettings()
    thermal: ThermalSettings = ThermalSettings()
    voice: VoiceSettings = VoiceSettings()
    gpio: GpioSettings = GpioSettings()
    rules: tuple[Rule, ...] = ()
    log: LogSettings = LogSettings()
    source: str = field(default="<defaults>", compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def base_topic(self) -> str:
        """``mqtt.base_topic`` with ``{device_id}`` filled in."""
        return self.mqtt.base_topic.replace("{device_id}", self.device_id)

    @property
    def models_dir(self) -> Path:
        """Where pulled models live."""
        return self.data_dir / "models"

    def line_of(self, key: str) -> int:
        """The config line of ``key`` (a dotted path), or of its nearest parent that has one."""
        return nearest_line(self.lines, key)


def nearest_line(lines: Mapping[str, int], key: str) -> int:
    """The line of ``key`` in ``lines``, or of its nearest parent that has one (0 if none)."""
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return lines.get("", 0)

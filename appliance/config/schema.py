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

from appliance.config.schema_api import ApiSettings
from appliance.config.schema_base import EXISTING, bounds


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
class AdapterSettings:
    """A LoRA adapter of the base model: a ``.gguf`` file (``path``) or a catalog name (``model``).

    ``scale`` multiplies its effect (llama.cpp applies ``scale * alpha / rank``).
    """

    path: Path | None = field(default=None, metadata=EXISTING)
    model: str | None = None
    scale: float = field(default=1.0, metadata=bounds(-8.0, 8.0))


@dataclass(frozen=True)
class LlmSettings:
    """The local language model and how it generates."""

    model: str | None = "llama-3.2-3b-instruct-q4_k_m"
    model_path: Path | None = field(default=None, metadata=EXISTING)
    n_ctx: int = field(default=2048, metadata=bounds(256, 131072))
    n_threads: int | None = field(default=None, metadata=bounds(1, 256))
    n_threads_batch: int | None = field(default=None, metadata=bounds(1, 256))
    n_batch: int = field(default=256, metadata=bounds(8, 8192))
    adaptive_threads: bool = True
    """Decode with a thread fewer while other processes keep the CPU busy, and probe back
    up when it is free (:mod:`appliance.llm.contention`); never above ``n_threads`` or the
    heat's count. ``false``: always ``n_threads``."""
    parallel: int | None = field(default=None, metadata=bounds(1, 8))
    """Requests decoded together in one batch, each with ``n_ctx`` of KV cache (``null``:
    2 on a board with 4 or more cores, such as a Pi 5; else 1). 1 is one at a time."""
    max_tokens: int = field(default=256, metadata=bounds(1, 32768))
    temperature: float = field(default=0.6, metadata=bounds(0.0, 2.0))
    top_p: float = field(default=0.95, metadata=bounds(0.0, 1.0))
    top_k: int = field(default=40, metadata=bounds(0, 1000))
    seed: int = field(default=42, metadata=bounds(0, 2**31 - 1))
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prefix_cache_entries: int = field(default=2, metadata=bounds(0, 16))
    stream_interval_ms: int = field(default=100, metadata=bounds(0, 5000))
    repeat_penalty: float = field(default=1.1, metadata=bounds(0.5, 2.0))
    frequency_penalty: float = field(default=0.0, metadata=bounds(-2.0, 2.0))
    presence_penalty: float = field(default=0.0, metadata=bounds(-2.0, 2.0))
    adapters: Mapping[str, AdapterSettings] = field(default_factory=dict)
    """LoRA adapters by name, loaded once beside the model (see docs/models.md)."""
    adapter_for: Mapping[str, str] = field(default_factory=dict)
    """The adapter each source uses (``voice``, ``mqtt``, ``sensor``, ``api``); none: the base."""
    thinking: Literal["auto", True, False] = "auto"
    """A thinking model (its catalog entry says so) thinks: on, off, or auto (not for voice)."""
    thinking_budget: int = field(default=512, metadata=bounds(1, 32768))
    thinking_budget_voice: int = field(default=64, metadata=bounds(1, 32768))
    publish_thinking: bool = False  # the thought on <base>/answer/thinking too


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
    # Topic filters an asker's Response Topic must match (empty: any topic the policy allows).
    response_topics: tuple[str, ...] = ()
    discovery: DiscoverySettings = DiscoverySettings()


@dataclass(frozen=True)
class ThermalLevel:
    """One row of the thermal policy: from ``from_c`` upwards these limits hold.

    ``max_tokens``: the answer budget (``null``: ``llm.max_tokens``; 0: no
    generation, a fixed "cooling down" reply). ``brief`` adds a brief-answer
    instruction to the system prompt, ``defer_rules`` holds sensor rules back
    until it is cooler (kept, not dropped), ``pause_s`` waits between generations.
    ``thinking`` is the share of a thinking model's budget left at this level
    (0: it does not think), applied live to a running thought too. ``parallel``
    caps the requests decoded together (``null``: ``llm.parallel``).
    """

    name: str
    from_c: float = field(metadata=bounds(-40.0, 150.0))
    max_tokens: int | None = field(default=None, metadata=bounds(0, 32768))
    brief: bool = False
    defer_rules: bool = False
    pause_s: float = field(default=0.0, metadata=bounds(0.0, 600.0))
    n_threads: int | None = field(default=None, metadata=bounds(1, 256))
    n_threads_batch: int | None = field(default=None, metadata=bounds(1, 256))
    thinking: float = field(default=1.0, metadata=bounds(0.0, 1.0))
    parallel: int | None = field(default=None, metadata=bounds(1, 8))

    def budget(self, llm_max_tokens: int) -> int:
        """The answer budget at this level, given ``llm.max_tokens``."""
        return self.max_tokens if self.max_tokens is not None else llm_max_tokens


DEFAULT_THERMAL_LEVELS = (
    ThermalLevel("normal", 0.0),
    # Heat cuts parallelism first (one request decoded at a time, the others wait),
    # then threads: decoding is bound by memory bandwidth and saturates at 2-3
    # threads on a Pi 5, so fewer cost little speed and save power. Shorter answers last.
    ThermalLevel("warm", 70.0, None, thinking=0.5, parallel=1),
    ThermalLevel("hot", 75.0, None, n_threads=2, thinking=0.0, parallel=1),
    ThermalLevel("critical", 80.0, 48, brief=True, defer_rules=True, n_threads=1, thinking=0.0,
                 parallel=1),
    ThermalLevel("emergency", 85.0, 0, defer_rules=True, n_threads=1, thinking=0.0,
                 parallel=1),
)


@dataclass(frozen=True)
class ThermalSettings:
    """The thermal watchdog that shortens generation as the SoC heats up."""

    zone_path: Path = Path("/sys/class/thermal/thermal_zone0/temp")
    interval_s: float = field(default=1.0, metadata=bounds(0.05, 60.0))
    hysteresis_c: float = field(default=3.0, metadata=bounds(0.0, 20.0))
    levels: tuple[ThermalLevel, ...] = DEFAULT_THERMAL_LEVELS
    # After this long without a reading the last level is no longer trusted: at least hot.
    stale_after_s: float = field(default=30.0, metadata=bounds(1.0, 3600.0))
    vcgencmd: str = "vcgencmd"
    vcgencmd_every_s: float = field(default=10.0, metadata=bounds(1.0, 3600.0))


INTENT_ACTIONS = ("stop", "repeat", "volume_up", "volume_down", "yes", "no")
"""What a ``voice.intents`` phrase can do without the model (yes/no answer a confirmation)."""


@dataclass(frozen=True)
class WakeSettings:
    """How the wake phrase is heard: by vosk itself, or by microWakeWord before vosk runs."""

    engine: Literal["vosk", "micro"] = "vosk"
    model: str = "okay_nabu"
    threshold: float | None = field(default=None, metadata=bounds(0.0, 1.0))


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
    kid_safe_actions: tuple[str, ...] = ()
    keep_transcripts: bool = False
    while_speaking: Literal["barge_in_only", "listen"] = "barge_in_only"
    echo_tail_s: float = field(default=0.8, metadata=bounds(0.0, 10.0))
    wake: WakeSettings = WakeSettings()
    prefill: bool = True
    # Follow-ups (appliance/voice/follow_up.py): after an answer that asks something,
    # listen this long without the wake word (0: never), at most so many times in a row.
    follow_up_s: float = field(default=5.0, metadata=bounds(0.0, 60.0))
    follow_up_max: int = field(default=3, metadata=bounds(1, 20))
    follow_up_end: tuple[str, ...] = ("thank you", "thanks", "no thanks", "that's all")
    kid_safe_follow_up: bool = False


@dataclass(frozen=True)
class GpioInput:
    """A digital input that publishes ``<base>/event/<name>``."""

    name: str
    pin: str | int
    kind: Literal["button", "motion", "digital"] = "button"
    pull_up: bool = True


@dataclass(frozen=True)
class GpioOutput:
    """A digital output that actions drive, such as a relay for a fan or a pump."""

    name: str
    pin: str | int
    active_high: bool = True
    initial: bool = False


STATE_LED_NAMES = ("listening", "thinking", "speaking", "error")
"""What ``gpio.state_leds`` can show, one LED each."""


@dataclass(frozen=True)
class GpioSettings:
    """Buttons, sensors, LEDs and the fan, through gpiozero."""

    enabled: bool = False
    inputs: tuple[GpioInput, ...] = ()
    outputs: tuple[GpioOutput, ...] = ()
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
    actions: tuple[str, ...] = ()
    knowledge: bool = False
    adapter: str | None = None
    """The LoRA adapter (a name in ``llm.adapters``) this rule's questions use."""


@dataclass(frozen=True)
class WorldSettings:
    """The store of latest sensor readings: which outside topics feed it, how often it is shown."""

    topics: Mapping[str, str] = field(default_factory=dict)
    publish_interval_s: float = field(default=1.0, metadata=bounds(0.0, 3600.0))


@dataclass(frozen=True)
class ActionPublish:
    """An MQTT action: publish ``payload`` (a template over args and world values) QoS 1."""

    topic: str
    payload: Any = None
    retain: bool = False


@dataclass(frozen=True)
class ActionGpio:
    """A GPIO action: drive the output named ``output`` (from ``gpio.outputs``)."""

    output: str
    value: bool = True


@dataclass(frozen=True)
class Requirement:
    """A precondition of an action over the world state, with readings fresher than ``fresh_s``."""

    when: str
    need: str
    fresh_s: float = field(default=300.0, metadata=bounds(1.0, 86400.0 * 30))


@dataclass(frozen=True)
class Action:
    """Something the appliance may do, only once the verifier agrees."""

    name: str
    description: str = ""
    phrases: tuple[str, ...] = ()
    publish: ActionPublish | None = None
    gpio: ActionGpio | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    require: tuple[Requirement, ...] = ()
    confirm: bool = False
    cooldown_s: float = field(default=0.0, metadata=bounds(0.0, 86400.0))


@dataclass(frozen=True)
class RouteSettings:
    """When a request escalates to the bigger model (any one that holds)."""

    keywords: tuple[str, ...] = ("explain why", "compare", "step by step")
    min_words: int | None = field(default=40, metadata=bounds(1, 100000))
    confidence_below: float | None = field(default=None, metadata=bounds(-100.0, 0.0))
    queue_over: int | None = field(default=None, metadata=bounds(0, 10000))
    level_at_least: str | None = None


@dataclass(frozen=True)
class EscalationSettings:
    """A bigger model elsewhere: an OpenAI-compatible server or another appliance over MQTT."""

    enabled: bool = False
    endpoint: str | None = None
    mqtt_topic: str | None = None
    model: str = ""
    api_key_file: Path | None = field(default=None, metadata=EXISTING)
    api_key_env: str | None = None
    first_token_timeout_s: float = field(default=5.0, metadata=bounds(0.1, 600.0))
    timeout_s: float = field(default=60.0, metadata=bounds(1.0, 3600.0))
    route: RouteSettings = RouteSettings()
    sources: tuple[Literal["mqtt", "sensor", "voice", "api"], ...] = (
        "mqtt", "sensor", "voice", "api")
    # The circuit breaker: this many failures in a row skip the remote for breaker_s.
    breaker_failures: int = field(default=3, metadata=bounds(1, 1000))
    breaker_s: float = field(default=60.0, metadata=bounds(1.0, 86400.0))


@dataclass(frozen=True)
class FleetSettings:
    """Devices that share one queue of site asks through an MQTT v5 shared subscription."""

    group: str
    topic: str
    # Take a site ask only while fewer than this many requests wait here.
    take_below: int = field(default=1, metadata=bounds(1, 10000))


@dataclass(frozen=True)
class KnowledgeSettings:
    """Answers from the device's own manuals (``appliance knowledge add``)."""

    enabled: bool = False
    mode: Literal["assist", "only"] = "assist"
    top_k: int = field(default=2, metadata=bounds(1, 20))
    # Calibrated on tests/knowledge_questions.yaml and tests/knowledge_offtopic.yaml
    # (appliance bench knowledge); null: every question counts as covered.
    min_score: float | None = 0.27
    max_context_tokens: int = field(default=400, metadata=bounds(16, 32768))
    cache_mb: int = field(default=512, metadata=bounds(0, 1 << 20))
    max_file_mb: float = field(default=50.0, metadata=bounds(0.001, 10000.0))
    prompt_lookup: bool = True


@dataclass(frozen=True)
class ConversationSettings:
    """Follow-up questions that remember: every entrance that names a conversation."""

    # Forgotten this long after their last use (Home Assistant's chat sessions: 5 min).
    idle_s: float = field(default=300.0, metadata=bounds(1.0, 86400.0))
    max_kept: int = field(default=32, metadata=bounds(1, 10000))  # conversations kept at once
    # Turns kept per conversation; the model drops the oldest sooner if they overflow n_ctx.
    max_turns: int = field(default=40, metadata=bounds(2, 1000))
    # Disk for the model's state after each conversation's last turn (0: the latest only).
    cache_mb: int = field(default=256, metadata=bounds(0, 1 << 20))


@dataclass(frozen=True)
class PowerSettings:
    """The power meter that gives each answer its energy."""

    meter: Literal["auto", "vcgencmd", "rapl", "none"] = "auto"
    vcgencmd: str = "vcgencmd"
    interval_s: float = field(default=0.5, metadata=bounds(0.05, 60.0))
    # What an answer costs (the console and /metrics): electricity, and optionally the
    # device's price spread over its expected life; null: not shown.
    price_per_kwh: float | None = field(default=None, metadata=bounds(0.0, 100.0))
    device_cost: float | None = field(default=None, metadata=bounds(0.0, 1e6))
    device_life_years: float = field(default=5.0, metadata=bounds(0.1, 50.0))
    currency: str = ""


@dataclass(frozen=True)
class ModelsSettings:
    """Where models come from: a signed site mirror, and the root of trust pinned for it.

    ``mirror`` is the base URL of a folder made by ``appliance catalog`` (its
    ``metadata/`` and ``targets/``); it is trusted only through The Update
    Framework, starting from the root file at ``trust_root``. A catalog file named
    by ``$APPLIANCE_CATALOG`` is unsigned: it is refused by ``models pull`` and
    ``verify`` unless ``allow_unsigned_site_catalog`` is true (``doctor`` warns).
    """

    mirror: str | None = None
    trust_root: Path = Path("/etc/appliance/root.json")
    allow_unsigned_site_catalog: bool = False


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
    world: WorldSettings = WorldSettings()
    actions: tuple[Action, ...] = ()
    actions_confirm_s: float = field(default=15.0, metadata=bounds(1.0, 600.0))
    escalation: EscalationSettings = EscalationSettings()
    fleet: FleetSettings | None = None
    knowledge: KnowledgeSettings = KnowledgeSettings()
    conversation: ConversationSettings = ConversationSettings()
    api: ApiSettings = ApiSettings()
    power: PowerSettings = PowerSettings()
    models: ModelsSettings = ModelsSettings()
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

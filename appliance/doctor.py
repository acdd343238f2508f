"""Health checks for ``appliance doctor``: each returns a :class:`Check` row."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.catalog import resolve_llm
from appliance.config import Settings
from appliance.config.secrets import read_password
from appliance.download import is_verified
from appliance.errors import ApplianceError
from appliance.hardware import mem_available_bytes
from appliance.llm.gguf import check_model_file
from appliance.mqtt.contract import Topics
from appliance.thermal import SensorError, ZoneMissing, read_celsius

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    status: Status
    detail: str


def check_model(settings: Settings) -> Check:
    """The configured model file exists and matches its catalog sha256."""
    model = resolve_llm(settings)
    check_model_file(model.path)  # not empty, not truncated, a GGUF at all
    if model.entry is None or not model.entry.sha256:
        return Check("model", "ok", f"{model.path} (no catalog hash to check)")
    if is_verified(model.path, model.entry.sha256):
        return Check("model", "ok", f"{model.name}: sha256 verified")
    return Check("model", "warn", f"{model.name}: present but not verified; "
                 f"run: appliance models verify {model.name}")


def check_catalog(settings: Settings) -> Check:
    """Where models come from, and whether that is signed (:mod:`appliance.trust.policy`).

    An unsigned site catalog, allowed by ``models.allow_unsigned_site_catalog``,
    is a warning on every run: whoever can change it chooses the weights.
    """
    from appliance.trust.policy import signing_state

    status, detail = signing_state(settings)
    return Check("catalog", status, detail)


def check_memory(settings: Settings) -> Check:
    """There is room for the model in ``MemAvailable``."""
    size = resolve_llm(settings).path.stat().st_size
    available = mem_available_bytes()
    detail = f"{available / 2**30:.1f} GiB available for a {size / 2**30:.2f} GiB model"
    if available < size:
        return Check("memory", "fail", detail)
    return Check("memory", "warn" if available < 1.5 * size else "ok", detail)


def check_temperature(settings: Settings) -> Check:
    """The CPU temperature is readable.

    No file at the zone path is a machine without a thermal zone (a dev box, a
    VM): a warning, since nothing is throttled there. A zone that exists but
    cannot be read or reads nonsense is a lost sensor: a fail, since the
    watchdog then runs the fan and holds at least ``hot``.
    """
    path = settings.thermal.zone_path
    try:
        celsius = read_celsius(path)
    except ZoneMissing:
        return Check("temperature", "warn", f"no thermal zone at {path}: not throttled")
    except SensorError as exc:
        return Check("temperature", "fail", f"{exc} (the fan runs, answers are shortened)")
    return Check("temperature", "warn" if celsius >= 80 else "ok", f"{celsius:.1f} °C")


def check_vosk(settings: Settings) -> Check:
    """The speech model is present when voice is on."""
    if not settings.voice.enabled:
        return Check("speech model", "ok", "voice disabled")
    path = settings.voice.model_path
    if path is None or not (path / "am" / "final.mdl").is_file():
        return Check("speech model", "fail", f"no vosk model at {path}")
    return Check("speech model", "ok", str(path))


def check_speech_out(settings: Settings) -> Check:
    """The TTS engine and its voice are there (a config error names what to pull)."""
    voice = settings.voice
    if not voice.enabled or voice.tts == "none":
        return Check("speech out", "ok", "off")
    from appliance.voice.playback import require_aplay  # numpy: only on a device that speaks
    from appliance.voice.tts import Espeak, check_tts, voice_name

    check_tts(settings)  # the piper voice and package; its errors become a fail row
    if voice.tts == "espeak-ng":
        Espeak(voice_name(voice))  # raises when espeak-ng is not installed
    require_aplay()
    return Check("speech out", "ok", f"{voice.tts} {voice_name(voice)}")


def check_audio(settings: Settings, cards: Path = Path("/proc/asound/cards")) -> Check:
    """ALSA has a sound card (needed for the microphone and speech)."""
    text = cards.read_text() if cards.exists() else ""
    if "no soundcards" in text or not text.strip():
        status: Status = "fail" if settings.voice.enabled else "warn"
        return Check("audio", status, "no ALSA sound card")
    return Check("audio", "ok", f"{len(text.strip().splitlines()) // 2} sound card(s)")


def check_broker(settings: Settings) -> Check:
    """The MQTT password can be read and the broker accepts TCP connections."""
    read_password(settings)  # raises the same one line that stops `run`
    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    try:
        with socket.create_connection((settings.mqtt.host, settings.mqtt.port), timeout=2):
            return Check("broker", "ok", f"{where} reachable")
    except OSError as exc:
        return Check("broker", "fail", f"{where}: {exc.strerror or exc}")


STATE_WAIT_S = 3.0
_IMAGE_HOSTNAMES = frozenset({"raspberrypi", "localhost", "debian", "ubuntu", "dietpi"})
"""Hostnames every card of an OS image starts with: as a device_id they clash."""


def check_device_id(settings: Settings) -> Check:
    """No other device uses this device_id: the service's retained state names a clash.

    The service notices when another client takes its MQTT session over (a
    cloned SD card) and keeps saying so in ``problems.mqtt`` of its state. We
    read that state as a listener of our own, never with the device's client
    id (that would take the session over ourselves).
    """
    device = settings.device_id
    try:
        state = _retained_state(settings)
    except OSError as exc:
        return Check("device id", "warn", f"cannot tell: the broker is not reachable "
                     f"({exc.strerror or exc})")
    clash = (state or {}).get("problems", {}).get("mqtt") if isinstance(state, dict) else None
    if isinstance(clash, str):
        return Check("device id", "fail", clash)
    if device in _IMAGE_HOSTNAMES:
        return Check("device id", "warn", f"{device!r} is the OS image's hostname: every "
                     "cloned card has it; set device_id (docs/fleet.md)")
    seen = "no clash in its state" if state is not None else "no state published yet"
    return Check("device id", "ok", f"{device}: {seen}")


def _retained_state(settings: Settings) -> dict[str, Any] | None:
    """The retained ``<base>/state``, or ``None`` when the broker holds none."""
    mqtt = settings.mqtt
    got: dict[str, Any] = {}
    subscribed, done = threading.Event(), threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"appliance-doctor-{uuid.uuid4().hex[:12]}")
    if mqtt.username is not None:
        client.username_pw_set(mqtt.username, read_password(settings))
    if mqtt.tls is not None:
        client.tls_set(ca_certs=_path(mqtt.tls.ca_file), certfile=_path(mqtt.tls.cert_file),
                       keyfile=_path(mqtt.tls.key_file), cert_reqs=ssl.CERT_REQUIRED)
    topic = Topics.under(settings.base_topic).state
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=0)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            got["state"] = json.loads(message.payload)
        done.set()

    client.on_message = on_message
    client.connect(mqtt.host, mqtt.port, keepalive=10)
    client.loop_start()
    try:  # a retained message comes right after the subscription is granted, if at all
        if subscribed.wait(STATE_WAIT_S):
            done.wait(1.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return got.get("state")


def _path(path: object) -> str | None:
    return None if path is None else str(path)


def check_journal(settings: Settings) -> Check:
    """The data_dir is writable, and no unreadable journal had to be set aside."""
    data = settings.data_dir
    if not data.exists():
        return Check("journal", "ok", f"{data} will be created at start")
    if not os.access(data, os.W_OK):
        return Check("journal", "fail", f"{data} is not writable: questions cannot be kept")
    aside = sorted(p.name for p in data.glob("journal.sqlite3.corrupt-*")
                   if not p.name.endswith(("-wal", "-shm")))
    if aside:
        return Check("journal", "warn", f"an unreadable journal was set aside: "
                     f"{', '.join(aside)} (its unanswered questions are lost; delete it "
                     "once looked at)")
    free = shutil.disk_usage(data).free
    if free < 64 << 20:
        return Check("journal", "warn", f"only {free >> 20} MiB free in {data}")
    return Check("journal", "ok", f"{data}, {free >> 20} MiB free")


def _systemctl(*args: str) -> str:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=10,
                          check=False)
    return done.stdout.strip()


def check_service(_settings: Settings) -> Check:
    """The systemd unit is active, with its watchdog on."""
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        return Check("service", "warn", "not running under systemd")
    state = _systemctl("is-active", "appliance.service")
    if state != "active":
        return Check("service", "warn", f"appliance.service is {state or 'not installed'}")
    watchdog = _systemctl("show", "-p", "WatchdogUSec", "--value", "appliance.service")
    if watchdog in ("", "0", "infinity"):
        return Check("service", "warn", "appliance.service runs without its watchdog")
    return Check("service", "ok", f"active, watchdog {watchdog}")


def check_user(_settings: Settings) -> Check:
    """The service user exists and is in the gpio, audio and video groups."""
    try:
        user = pwd.getpwnam("appliance")
    except KeyError:
        return Check("user", "warn", "no system user 'appliance' (install.sh creates it)")
    groups = {g.gr_name for g in grp.getgrall() if user.pw_name in g.gr_mem}
    wanted = {name for name in ("gpio", "audio", "video") if _group_exists(name)}
    missing = wanted - groups
    if missing:
        return Check("user", "fail", f"appliance is not in {', '.join(sorted(missing))}")
    return Check("user", "ok", f"appliance in {', '.join(sorted(wanted)) or 'no device groups'}")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


CHECKS: tuple[tuple[str, Callable[[Settings], Check]], ...] = (
    ("model", check_model),
    ("catalog", check_catalog),
    ("memory", check_memory),
    ("journal", check_journal),
    ("temperature", check_temperature),
    ("speech model", check_vosk),
    ("speech out", check_speech_out),
    ("audio", check_audio),
    ("broker", check_broker),
    ("device id", check_device_id),
    ("service", check_service),
    ("user", check_user),
)


def run_checks(settings: Settings) -> Iterator[Check]:
    """Every check in turn; one that raises becomes a ``fail`` row naming the problem."""
    yield Check("config", "ok", settings.source)
    for name, check in CHECKS:
        try:
            yield check(settings)
        except (ApplianceError, OSError) as exc:
            yield Check(name, "fail", str(exc))

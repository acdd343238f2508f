"""Hostile MQTT input for the fuzz test and its benchmark: every payload deserves one error.

:func:`hostile_inputs` makes a reproducible list of messages across the ask,
event, cancel and rule topics, from the corners the red team found (huge
integers, lone surrogates, deep nesting, wildcard and foreign response topics)
to the usual ones (invalid JSON and UTF-8, oversize, wrong types, unknown
fields). Each one must be answered with exactly one ``error`` message and
nothing else; :func:`run_fuzz` sends them with valid asks interleaved and checks
that every valid ask is answered too.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.mqtt.publisher import properties_of


@dataclass(frozen=True)
class Hostile:
    """One message to send: it must get exactly one error."""

    kind: str
    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


def _deep(depth: int, rng: random.Random, *, object_first: bool = False) -> str:
    opener = rng.choice(["[", '{"a":'])
    if object_first:  # an ask that does not start with "{" is plain text, a fair question
        return '{"a":' + _deep(depth - 1, rng) + "}"
    closer = "]" if opener == "[" else "}"
    return opener * depth + "1" + closer * depth


def _ask_payloads(rng: random.Random, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 12)))
    yield "invalid json", rng.choice([b"{not json", b'{"text": ', b'{"text": "x",}', b"{]",
                                      b'{"text": "a" "b"}', b"{" + word.encode()])
    yield "invalid utf-8", rng.choice([b"\xff\xfe", b"caf\xe9", b'{"text": "\xc3"}',
                                       b"\xed\xa0\x80 surrogate bytes"])
    yield "oversize", b"x" * (max_bytes + rng.randint(1, 4000))
    yield "empty", rng.choice([b"", b" ", b"\n\t ", b'{"text": "   "}', b'{"text": ""}'])
    yield "wrong types", json.dumps(rng.choice([
        {"text": rng.randint(-9, 9)}, {"text": None}, {"text": [word]}, {"text": {"a": 1}},
        {"text": word, "max_tokens": word}, {"text": word, "max_tokens": -rng.randint(1, 9)},
        {"text": word, "max_tokens": 1.5}, {"text": word, "max_tokens": True},
        {"text": word, "max_tokens": 10**6}, {"id": rng.randint(0, 99), "text": word},
        {"id": "", "text": word}, {"id": "x" * 65, "text": word}, {"text": word, "tier": 5},
    ])).encode()
    yield "unknown fields", json.dumps({"text": word, rng.choice(["txt", "prompt", "x"]): 1}
                                       ).encode()
    yield "lone surrogate", rng.choice([b'{"text": "\\ud800"}', b'{"text": "a\\udfffb"}',
                                        b'{"id": "\\udc00", "text": "hi"}'])
    yield "deep nesting", _deep(rng.randint(33, max(34, max_bytes // 6)), rng,
                                object_first=True).encode()
    yield "not a number", rng.choice([b'{"text": "hi", "max_tokens": NaN}',
                                      b'{"text": "hi", "max_tokens": Infinity}',
                                      b'{"text": "hi", "max_tokens": 1e999}'])


def _event_payloads(rng: random.Random, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    yield "invalid json", rng.choice([b"{", b"{temperature: 40}", b"{'t': 1}", b"[}"])
    yield "huge integer", ('{"temperature": 1' + "0" * rng.randint(400, 1000) + "}").encode()
    yield "huge integer digits", ('{"temperature": 1' + "0" * 5000 + "}").encode()
    yield "lone surrogate", b'{"temperature": 45, "note": "\\ud800"}'
    yield "deep nesting", ('{"temperature": 45, "x": ' + _deep(rng.randint(40, 400), rng)
                           + "}").encode()
    yield "not a number", rng.choice([b'{"temperature": NaN}', b'{"temperature": -Infinity}',
                                      b'{"temperature": 1e400}'])
    yield "not an object", rng.choice([b"[45]", b"45", b'"hot"', b"null"])
    yield "invalid utf-8", b'{"temperature": 45, "note": "\xff"}'
    yield "oversize", b'{"t": "' + b"x" * (max_bytes + 10) + b'"}'


def hostile_inputs(base: str, rule_topic: str, count: int, max_bytes: int = 4096,
                   seed: int = 7) -> list[Hostile]:
    """``count`` reproducible hostile messages for the appliance whose base topic is ``base``."""
    rng = random.Random(seed)
    out: list[Hostile] = []
    while len(out) < count:
        pick = rng.randrange(6)
        if pick <= 1:
            for kind, payload in _ask_payloads(rng, max_bytes):
                out.append(Hostile(f"ask: {kind}", f"{base}/ask", payload))
        elif pick == 2:
            for kind, payload in _event_payloads(rng, max_bytes):
                topic = rng.choice([f"{base}/event/greenhouse", rule_topic])
                out.append(Hostile(f"event: {kind}", topic, payload))
            out.append(Hostile("event: unknown name", f"{base}/event/nobody-{rng.randint(0, 9)}",
                               b'{"temperature": 45}'))
        elif pick == 3:
            for payload in (b"{", b"[]", b'{"id": 5}', b"{}", b'{"id": ""}',
                            b'{"id": "never-asked"}', b'{"id": "\\ud800"}'):
                out.append(Hostile("cancel", f"{base}/cmd/cancel", payload))
        elif pick == 4:
            topic = rng.choice(["replies/#", "replies/+/x", "$SYS/broker/x",
                                "homeassistant/device/x/config", f"{base}/status",
                                f"{base}/answer", "appliance/other-device/answer", "a" * 300])
            out.append(Hostile("response topic", f"{base}/ask", b"What is two plus two?",
                               response_topic=topic,
                               correlation=rng.randbytes(rng.randint(0, 64))))
        else:
            out.append(Hostile("odd properties", f"{base}/ask", b"\xff",
                               user_properties=(("client", "x" * rng.randint(1, 500)),
                                                ("weird", "\u2028"))))
    return out[:count]


@dataclass(frozen=True)
class FuzzResult:
    """How one fuzz run went (``seconds``: from the first send to the last error)."""

    sent: int
    errors: int
    valid_asked: int
    valid_answered: int
    seconds: float
    payloads_per_s: float
    unexpected: list[str]


class _Observer:
    def __init__(self, port: int, base: str) -> None:
        self.base = base
        self.errors = 0
        self.last_error_at = 0.0
        self.answers: set[str] = set()
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"fuzz-observer-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{base}/error", 1), (f"{base}/answer", 1),
                               ("replies/#", 1), (f"{base}/alert", 1)])
        ready.wait(10)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        with self.lock:
            if m.topic == f"{self.base}/error":
                self.errors += 1
                self.last_error_at = time.perf_counter()
                return
            body = json.loads(m.payload)
            if m.topic == f"{self.base}/answer" and str(body.get("id", "")).startswith("ok-"):
                self.answers.add(body["id"])
            else:
                self.unexpected.append(f"{m.topic}: {m.payload[:100]!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_fuzz(port: int, base: str, rule_topic: str, count: int, *, valid_every: int = 100,
             settle: Callable[[], None] = lambda: time.sleep(1.0), timeout_s: float = 300,
             ) -> FuzzResult:
    """Send ``count`` hostile messages (a valid ask after every ``valid_every``) and tally."""
    observer = _Observer(port, base)
    sender = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                         client_id=f"fuzz-sender-{time.monotonic_ns()}")
    sender.max_inflight_messages_set(200)
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    hostile = hostile_inputs(base, rule_topic, count)
    valid = 0
    started = time.perf_counter()
    infos = []
    for i, message in enumerate(hostile, start=1):
        infos.append(sender.publish(message.topic, message.payload, qos=1,
                                    properties=properties_of(message)))
        if i % valid_every == 0:
            valid += 1
            infos.append(sender.publish(f"{base}/ask", json.dumps(
                {"id": f"ok-{valid}", "text": "Say hi.", "max_tokens": 4}), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with observer.lock:
            if observer.errors >= len(hostile) and len(observer.answers) >= valid:
                break
        time.sleep(0.05)
    seconds = max(observer.last_error_at - started, 1e-9)  # until the last error: our rate
    settle()  # anything extra (a second error for one input) arrives now
    sender.disconnect()
    sender.loop_stop()
    observer.close()
    return FuzzResult(len(hostile), observer.errors, valid, len(observer.answers), seconds,
                      len(hostile) / seconds, observer.unexpected)

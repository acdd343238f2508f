"""Hostile Wyoming input for the fuzz test and its benchmark, and the well-behaved events between.

:func:`wyoming_cases` makes a reproducible list of byte streams, one per
connection: events that break the framing (not an event, lengths that are
huge, negative or wrong, an event cut short, a header line too long) and
events that frame well but are wrong (wrong types and missing fields, audio
in formats we refuse or not in whole frames, lone surrogates and invalid
UTF-8, deep nesting, a sentence too long to speak).

The contract (checked by :mod:`appliance.bench.fuzz_exchange`):

* framing garbage (``framing: ...``): the stream cannot be read on, so the
  server closes the connection, after at most one ``error`` event;
* everything else: exactly one ``error`` event (never ``internal error``);
  the server may then close, or go on serving (a ``ping`` gets its ``pong``
  and no second error).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

VERSION = "1.5.3"


@dataclass(frozen=True)
class WyomingCase:
    """One connection's bytes; ``half_close``: then we stop sending (an unfinished event)."""

    kind: str
    raw: bytes
    half_close: bool = False

    @property
    def framing(self) -> bool:
        """Whether the stream is unreadable from here on (a close is the right answer)."""
        return self.kind.startswith("framing")


def event(kind: str, data: dict[str, Any] | None = None, payload: bytes = b"", *,
          inline: bool = False) -> bytes:
    """One event as the library writes it (``inline``: data in the header, as older ones did)."""
    header: dict[str, Any] = {"type": kind, "version": VERSION}
    data_bytes = b""
    if data is not None and inline:
        header["data"] = data
    elif data is not None:
        data_bytes = json.dumps(data).encode()
        header["data_length"] = len(data_bytes)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + data_bytes + payload


def raw_event(kind: str, data: bytes, payload: bytes = b"") -> bytes:
    """An event whose data segment is ``data`` as given (not necessarily JSON)."""
    header = {"type": kind, "version": VERSION, "data_length": len(data)}
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + data + payload


def _audio(rate: Any = 16000, width: Any = 2, channels: Any = 1) -> dict[str, Any]:
    return {"rate": rate, "width": width, "channels": channels}


START = event("transcribe", {"language": "en"}) + event("audio-start", _audio())


def _framing(rng: random.Random) -> WyomingCase:
    choice = rng.randrange(5)
    if choice == 0:
        raw = rng.choice([b"\x00\xff\xfe not json at all\n", b"[1, 2, 3]\n", b'"audio-chunk"\n',
                          b"{}\n", b"null\n",
                          b'{"data": {"text": "hi"}}\n'])
        return WyomingCase("framing: not an event", raw)
    if choice == 1:
        header = rng.choice([{"data_length": 2**31}, {"payload_length": 2**40},
                             {"data_length": 999_999_999}, {"payload_length": (1 << 20) + 1},
                             {"data_length": 10**30}])
        raw = json.dumps({"type": rng.choice(["audio-chunk", "transcript", "synthesize"]),
                          **header}).encode() + b"\n" + rng.randbytes(64)
        return WyomingCase("framing: huge length", raw)
    if choice == 2:
        whole = event("transcript", {"text": "hello there"}, rng.randbytes(100))
        cut = whole[: rng.randint(5, len(whole) - 1)]
        return WyomingCase("framing: unfinished event", START + cut, half_close=True)
    if choice == 3:
        data = json.dumps({"text": "hello"}).encode()
        header = rng.choice([{"data_length": -1}, {"data_length": "12"},
                             {"data_length": 3.5}, {"data_length": [4]},
                             {"data_length": len(data) - 3}, {"payload_length": -7}])
        raw = json.dumps({"type": "transcript", **header}).encode() + b"\n" + data
        if rng.random() < 0.5:
            raw = raw_event("transcript", rng.choice([b"xxxxx", b"{not json}", b"\xff\xfe"]))
        return WyomingCase("framing: wrong lengths", raw)
    size = rng.randint(70_000, 300_000)
    raw = b'{"type": "describe", "pad": "' + b" " * size + b'"}\n'
    return WyomingCase("framing: oversized line", raw)


def _wrong_types(rng: random.Random) -> bytes:
    return rng.choice([
        event("transcript", {"text": rng.choice([5, None, [], {"a": 1}, True])}),
        event("transcript", {}), event("transcript", {"context": {"conversation_id": "x"}}),
        b'{"type": "transcript", "data": [1, 2]}\n',
        event("synthesize", {"text": rng.choice([5, None, ["hi"]])}), event("synthesize", {}),
        START + event("audio-chunk", {"width": 2, "channels": 1}, b"\x00\x00"),
        event("synthesize-start", {}) + event("synthesize-chunk", {"text": 7}),
        event("audio-start", {"rate": 16000}),
    ])


def _audio_format(rng: random.Random) -> bytes:
    bad = rng.choice([_audio(rate=r) for r in (0, 7999, 192_001, -16000, 16000.5, "16000",
                                               None, 10**12)]
                     + [_audio(width=w) for w in (0, 5, -2, "2", 1 << 40)]
                     + [_audio(channels=c) for c in (0, 3, 8, -1, "1")])
    if rng.random() < 0.5:
        return event("transcribe", {}) + event("audio-start", bad)
    if rng.random() < 0.5:
        return START + event("audio-chunk", bad, b"\x00" * 64)
    width, channels = rng.choice([(2, 1), (3, 1), (2, 2), (4, 1), (3, 2)])
    frame = width * channels
    partial = frame * rng.randint(0, 200) + rng.randint(1, frame - 1)
    fmt = _audio(rng.choice([8000, 16000, 22050, 44100, 48000]), width, channels)
    return (event("transcribe", {}) + event("audio-start", fmt)
            + event("audio-chunk", fmt, rng.randbytes(partial)))


def _encoding(rng: random.Random, kind: str) -> bytes:
    if kind == "encoding: lone surrogate":
        text = rng.choice(["\ud800", "a\udfffb", "Hello \udc00."])
        return rng.choice([event("transcript", {"text": text}),
                           event("synthesize", {"text": text}),
                           event("synthesize-start", {}) + event("synthesize-chunk",
                                                                 {"text": text})])
    bad = rng.choice([b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"])
    if rng.random() < 0.5:
        return b'{"type": "transcript", "data": {"text": "' + bad + b'"}}\n'
    return raw_event(rng.choice(["transcript", "synthesize"]), b'{"text": "' + bad + b'"}')


def _deep(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # in the header line, under its 64 KiB
        depth = rng.randint(2_000, 30_000)
        return (b'{"type": "transcript", "data": {"text": "hi", "context": ' + b"[" * depth
                + b"]" * depth + b"}}\n")
    depth = rng.randint(2_000, 400_000)
    return raw_event("transcript", b'{"text": "hi", "context": ' + b"[" * depth + b"1"
                     + b"]" * depth + b"}")


def _long_sentence(rng: random.Random) -> bytes:
    words = " ".join(["word"] * rng.randint(27_000, 80_000))  # 135 to 400 KB, no full stop
    return event("synthesize", {"text": words})


WYOMING_KINDS = ("framing: not an event", "framing: huge length", "framing: unfinished event",
                 "framing: wrong lengths", "framing: oversized line", "wrong types",
                 "audio format", "encoding: lone surrogate", "encoding: invalid utf-8",
                 "deep nesting", "oversize text")
"""Every category :func:`wyoming_cases` makes."""


def wyoming_cases(count: int, seed: int = 7) -> list[WyomingCase]:
    """``count`` reproducible hostile connections."""
    rng = random.Random(seed)
    out: list[WyomingCase] = []
    while len(out) < count:
        pick = rng.randrange(7)
        if pick <= 1:
            out.append(_framing(rng))
        elif pick == 2:
            out.append(WyomingCase("wrong types", _wrong_types(rng)))
        elif pick == 3:
            out.append(WyomingCase("audio format", _audio_format(rng)))
        elif pick == 4:
            kind = rng.choice(["encoding: lone surrogate", "encoding: invalid utf-8"])
            out.append(WyomingCase(kind, _encoding(rng, kind)))
        elif pick == 5:
            out.append(WyomingCase("deep nesting", _deep(rng)))
        elif rng.random() < 0.25:  # a few hundred KB each: rarer than the rest
            out.append(WyomingCase("oversize text", _long_sentence(rng)))
    return out


def silence(seconds: float, rate: int = 16000) -> bytes:
    """16-bit mono silence."""
    return b"\x00\x00" * int(rate * seconds)


def valid_wyoming(kind: str, text: str = "Say hi.") -> tuple[bytes, str]:
    """A well-behaved request of ``kind`` and the event type that ends its answer."""
    if kind == "describe":
        return event("describe"), "info"
    if kind == "ping":
        return event("ping", {"text": "x"}), "pong"
    if kind == "synthesize":
        return event("synthesize", {"text": "Hello there."}), "audio-stop"
    if kind == "transcribe":
        chunks = b"".join(event("audio-chunk", _audio(), silence(0.1)) for _ in range(5))
        return START + chunks + event("audio-stop"), "transcript"
    return event("transcript", {"text": text}), "handled"

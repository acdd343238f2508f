"""Read a GGUF file's metadata header without loading the model."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import ModelError

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ModelError(f"{fh.name}: truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    return fh.read(_read(fh, "Q")).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        return _read(fh, _SCALARS[kind])
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item, count = _read(fh, "I"), _read(fh, "Q")
        if item in _SCALARS and not keep:  # skip big arrays (vocabularies) without parsing
            fh.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
            return None
        values = [_value(fh, item, keep) for _ in range(count)]
        return values if keep else None
    raise ModelError(f"{fh.name}: unknown GGUF value type {kind}")


def read_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (arrays are skipped)."""
    try:
        with path.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelError(f"{path}: not a GGUF file")
            version = _read(fh, "I")
            if version < 2:
                raise ModelError(f"{path}: GGUF version {version} is too old")
            _read(fh, "Q")  # tensor count
            metadata: dict[str, Any] = {}
            for _ in range(_read(fh, "Q")):
                key = _string(fh)
                kind = _read(fh, "I")
                value = _value(fh, kind, keep=False)
                if kind != _ARRAY:
                    metadata[key] = value
            return metadata
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from exc

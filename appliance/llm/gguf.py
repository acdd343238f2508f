"""Read a GGUF file's header (metadata and tensor table) without loading the model.

Every length and count the header declares is checked against the bytes the
file really has before anything is read, and every field against the rules of
the llama.cpp that will load it (ggml's ``gguf.cpp``), so a damaged or hostile
file is one :class:`~appliance.errors.ModelError` naming the file and the fault,
never an allocation of what the header claims. :func:`check_model_file` also
checks that the tensor data the table describes is all there.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import ModelError
from appliance.files import open_regular

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name is shorter than this
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEY = 1 << 16  # no real key comes near; a longer one is garbage, not read
MAX_KEPT_STRING = 1 << 20  # longer values (a whole tokenizer.json) are skipped, not read
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table: where its data lies, relative to the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    """A parsed GGUF header."""

    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int

    @property
    def data_end(self) -> int:
        """The byte just past the last tensor's data: the least size a whole file has."""
        return self.data_offset + max((t.offset + t.nbytes for t in self.tensors), default=0)


SKIP_BLOCK = 1 << 16
"""Bytes read at a time while skipping an array of strings."""


class _Reader:
    """Sequential reads that never go past the end of the file, whatever the header says."""

    def __init__(self, fh: BinaryIO, path: Path, size: int) -> None:
        self.fh, self.path, self.size, self.pos = fh, path, size, 0

    def fail(self, problem: str) -> ModelError:
        return ModelError(f"{self.path}: {problem}")

    def room(self, n: int, what: str) -> None:
        """Refuse ``n`` bytes of ``what`` unless the file holds them from here."""
        if n > self.size - self.pos:
            raise self.fail(f"truncated or damaged GGUF: {what} would end at byte "
                            f"{self.pos + n}, past the end of the file ({self.size} bytes)")

    def read(self, n: int, what: str) -> bytes:
        self.room(n, what)
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise self.fail(f"truncated GGUF: {what} at offset {self.pos} could not be read")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.room(n, what)
        self.fh.seek(n, os.SEEK_CUR)
        self.pos += n

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` length-prefixed strings (a vocabulary: 10^5 of them), read in blocks.

        The same checks as a :meth:`skip` of each, without a method call and two formatted
        strings per string (the file object buffers the reads either way).
        """
        block, at, base = b"", 0, self.pos  # ``block`` holds the file from offset ``base``
        for i in range(count):
            if at + 8 > len(block):
                block, base, at = block[at:] + self.fh.read(SKIP_BLOCK), base + at, 0
                if len(block) < 8:
                    self.pos = base
                    self.room(8, f"{what}[{i}]")  # past the end: the error names it
                    raise self.fail(f"truncated GGUF: {what}[{i}] at offset {base} could "
                                    "not be read")
            (length,) = struct.unpack_from("<Q", block, at)
            at += 8
            if at + length <= len(block):
                at += length
                continue
            self.pos = base + at
            self.room(length, f"{what}[{i}]")
            self.fh.seek(self.pos + length)
            block, base, at = b"", self.pos + length, 0
        self.pos = base + at
        self.fh.seek(self.pos)

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str, limit: int | None) -> str | None:
        """A length-prefixed string; ``None`` (skipped unread) if longer than ``limit``."""
        length = self.unpack("Q", f"the length of {what}")
        if limit is not None and length > limit:
            self.skip(length, what)
            return None
        return self.read(length, what).decode("utf-8", errors="replace")

    def name(self, what: str, limit: int) -> str:
        """A key or tensor name: refused, unread, if it is ``limit`` bytes or longer."""
        length = self.unpack("Q", f"the length of {what}")
        if length >= limit:
            raise self.fail(f"{what} is {length} bytes long; the limit is {limit - 1}")
        return self.read(length, what).decode("utf-8", errors="replace")

    def value(self, kind: int, what: str) -> Any:
        """A metadata value; arrays are skipped (``None``), as no caller needs them."""
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind], what)
        if kind == _STRING:
            return self.string(what, MAX_KEPT_STRING)
        if kind != _ARRAY:
            raise self.fail(f"{what} has unknown GGUF value type {kind}")
        item = self.unpack("I", f"the item type of {what}")
        count = self.unpack("Q", f"the length of {what}")
        if item in _SCALARS:
            self.skip(count * struct.calcsize("<" + _SCALARS[item]), what)
        elif item == _STRING:
            self.room(count * 8, f"{what} ({count} strings)")  # 8 bytes of length at least
            self.skip_strings(count, what)
        elif item == _ARRAY:
            raise self.fail(f"{what} is an array of arrays, which llama.cpp does not load")
        else:
            raise self.fail(f"{what} has unknown GGUF item type {item}")
        return None


def read_header(path: Path, *, tensors: bool = True) -> GgufHeader:
    """Parse the header of the GGUF file at ``path`` (the tensor table too, if ``tensors``)."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            return _parse(_Reader(fh, path, size), tensors)
    except OSError as exc:  # missing, a directory, unreadable, EIO from a failing SD card
        raise ModelError(f"{path}: cannot read: {exc.strerror}") from None


def _parse(r: _Reader, tensors: bool) -> GgufHeader:
    if r.size == 0:
        raise r.fail("the file is empty, not a GGUF model")
    magic = r.fh.read(4)
    r.pos = len(magic)
    if magic != MAGIC:
        raise r.fail(f"not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    version = r.unpack("I", "the version")
    if version & 0xFFFF == 0 and version:
        raise r.fail("a GGUF file for the other byte order (big-endian)")
    if version not in VERSIONS:
        raise r.fail(f"GGUF version {version} is not supported (only "
                     f"{' and '.join(map(str, VERSIONS))})")
    n_tensors = r.unpack("Q", "the tensor count")
    n_kv = r.unpack("Q", "the metadata count")
    r.room(n_kv * 13, f"{n_kv} metadata entries")  # a key length, a type, a 1-byte value
    metadata: dict[str, Any] = {}
    kinds: dict[str, int] = {}
    for i in range(n_kv):
        key = r.name(f"metadata key #{i}", MAX_KEY)
        if key in kinds:
            raise r.fail(f"metadata key {key!r} appears twice")
        kinds[key] = kind = r.unpack("I", f"the type of {key!r}")
        value = r.value(kind, repr(key))
        if value is not None:
            metadata[key] = value
    if not tensors:
        return GgufHeader(version, metadata, (), 0, r.size)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in kinds and kinds["general.alignment"] != _UINT32:
        raise r.fail("general.alignment is not a uint32")
    if alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment} is not a power of two")
    r.room(n_tensors * 24, f"{n_tensors} tensor entries")  # name length, dims, type, offset
    table = _tensor_table(r, n_tensors, alignment)
    data_offset = -(-r.pos // alignment) * alignment
    return GgufHeader(version, metadata, table, data_offset, r.size)


def _tensor_table(r: _Reader, count: int, alignment: int) -> tuple[TensorInfo, ...]:
    from appliance.llm.native import ggml_type_sizes  # loads llama.cpp: only here

    types = ggml_type_sizes()
    table: list[TensorInfo] = []
    names: set[str] = set()
    expected = 0  # llama.cpp requires the tensors in order, each padded to the alignment
    for i in range(count):
        name = r.name(f"the name of tensor #{i}", MAX_NAME)
        if name in names:
            raise r.fail(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = r.unpack("I", f"the dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions; at most {MAX_DIMS}")
        shape = tuple(r.unpack("Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        elements = 1
        for dim in shape:
            elements *= dim
        if any(d > _INT64_MAX for d in shape) or elements > _INT64_MAX:
            raise r.fail(f"tensor {name!r} has an impossible shape {shape}")
        ggml_type = r.unpack("I", f"the type of tensor {name!r}")
        block, block_bytes = types[ggml_type] if ggml_type < len(types) else (0, 0)
        if block == 0:
            raise r.fail(f"tensor {name!r} has a ggml type ({ggml_type}) this llama.cpp "
                         "does not know")
        if shape and shape[0] % block:
            raise r.fail(f"tensor {name!r}: a row of {shape[0]} is not a multiple of the "
                         f"type's block of {block}")
        offset = r.unpack("Q", f"the data offset of tensor {name!r}")
        if offset != expected:
            raise r.fail(f"tensor {name!r} has data offset {offset}, expected {expected}")
        nbytes = elements // block * block_bytes
        table.append(TensorInfo(name, shape, ggml_type, offset, nbytes))
        expected += -(-nbytes // alignment) * alignment
    return tuple(table)


def read_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (arrays and huge strings are skipped)."""
    return dict(read_header(path, tensors=False).metadata)


def check_model_file(path: Path) -> GgufHeader:
    """Check that ``path`` is a whole GGUF model that llama.cpp can map: header, table, data."""
    header = read_header(path)
    if header.file_size < header.data_end:
        raise ModelError(f"{path}: truncated: the tensor data ends at byte {header.data_end}, "
                         f"but the file has only {header.file_size} bytes")
    return header

"""The GGUF header reader: the real model whole, and every hostile file as one line."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from appliance.errors import ModelError
from appliance.llm.gguf import check_model_file, read_header, read_metadata
from appliance.llm.memory import plan
from tests.conftest import smollm2_path


def _str(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _kv(key: bytes, kind: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", kind) + payload


def _tensor(name: bytes, shape: Sequence[int], ggml_type: int, offset: int) -> bytes:
    dims = b"".join(struct.pack("<Q", d) for d in shape)
    return _str(name) + struct.pack("<I", len(shape)) + dims + struct.pack("<IQ", ggml_type,
                                                                           offset)


def _gguf(kvs: Sequence[bytes] = (), tensors: Sequence[bytes] = (), *, version: int = 3,
          n_kv: int | None = None, n_tensors: int | None = None, data: bytes = b"") -> bytes:
    """A GGUF file as llama.cpp's writer lays it out (alignment 32)."""
    head = b"GGUF" + struct.pack("<IQQ", version,
                                 len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + data


ARCH = _kv(b"general.architecture", 8, _str(b"llama"))
TOKENS = _kv(b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + _str(b"a") + _str(b"bc"))
# An f32 tensor of 64 x 2 (512 bytes), then a q4_0 row of 32 (one 18-byte block).
GOOD = _gguf([ARCH, _kv(b"llama.block_count", 4, struct.pack("<I", 2)), TOKENS],
             [_tensor(b"w", (64, 2), 0, 0), _tensor(b"q", (32,), 2, 512)],
             data=bytes(512 + 18))
HUGE = 1 << 40


def _write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_real_model_is_whole_to_the_last_byte() -> None:
    model = smollm2_path()
    header = check_model_file(model)
    assert header.version == 3 and len(header.tensors) == 272
    assert header.data_end == header.file_size == model.stat().st_size  # ggml's own sizes
    meta = read_metadata(model)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped
    assert plan(model, 1024).kv_bytes_per_token == 2 * 30 * 3 * (576 // 9) * 2


def test_a_file_laid_out_by_hand(tmp_path: Path) -> None:
    header = check_model_file(_write(tmp_path, GOOD))
    assert dict(header.metadata) == {"general.architecture": "llama", "llama.block_count": 2}
    assert [(t.name, t.shape, t.offset, t.nbytes) for t in header.tensors] == [
        ("w", (64, 2), 0, 512), ("q", (32,), 512, 18)]
    assert header.data_end == len(GOOD) == 786
    assert read_header(_write(tmp_path, GOOD), tensors=False).tensors == ()


@pytest.mark.parametrize(("data", "problem"), [
    (b"", "the file is empty, not a GGUF model"),
    (b"hello, this is a text file\n", "not a GGUF file (it starts with b'hell', not b'GGUF')"),
    (b"GGUF", "truncated or damaged GGUF: the version would end at byte 8, past the end of "
              "the file (4 bytes)"),
    (_gguf(version=1), "GGUF version 1 is not supported (only 2 and 3)"),
    (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "a GGUF file for the other byte order (big-endian)"),
    (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, HUGE) + b"x" * 100,
     f"metadata key #0 is {HUGE} bytes long; the limit is 65535"),
    (_gguf([_kv(b"k", 8, struct.pack("<Q", HUGE) + b"x" * 100)]),
     f"truncated or damaged GGUF: 'k' would end at byte {45 + HUGE}, past the end of the file "
     "(160 bytes)"),
    (_gguf(n_kv=1 << 62), "truncated or damaged GGUF: 4611686018427387904 metadata entries "
                          "would end at byte 59951918239556042776, past the end of the file "
                          "(32 bytes)"),
    (_gguf([ARCH], n_tensors=1 << 62), "truncated or damaged GGUF: 4611686018427387904 tensor "
                                       "entries would end at byte 110680464442257309765, past "
                                       "the end of the file (96 bytes)"),
    (_gguf([_kv(b"k", 9, struct.pack("<IQ", 10, 1 << 60))]),
     "truncated or damaged GGUF: 'k' would end at byte 9223372036854775857, past the end of "
     "the file (64 bytes)"),
    (_gguf([_kv(b"k", 9, struct.pack("<IQ", 8, 1 << 60))]),
     "truncated or damaged GGUF: 'k' (1152921504606846976 strings) would end at byte "
     "9223372036854775857, past the end of the file (64 bytes)"),
    (_gguf([_kv(b"k", 99, bytes(8))]), "'k' has unknown GGUF value type 99"),
    (_gguf([_kv(b"k", 9, struct.pack("<IQ", 77, 1))]), "'k' has unknown GGUF item type 77"),
    (_gguf([_kv(b"k", 9, struct.pack("<IQ", 9, 1) * 500)]),
     "'k' is an array of arrays, which llama.cpp does not load"),
    (_gguf([ARCH, ARCH]), "metadata key 'general.architecture' appears twice"),
    (_gguf([_kv(b"general.alignment", 4, struct.pack("<I", 0))], [_tensor(b"w", (8,), 0, 0)],
           data=bytes(32)), "general.alignment 0 is not a power of two"),
    (_gguf([_kv(b"general.alignment", 8, _str(b"32"))], [_tensor(b"w", (8,), 0, 0)],
           data=bytes(32)), "general.alignment is not a uint32"),
    (_gguf([ARCH], [_tensor(b"w", (4,), 200, 0)], data=bytes(32)),
     "tensor 'w' has a ggml type (200) this llama.cpp does not know"),
    (_gguf([ARCH], [_tensor(b"w", (32,), 4, 0)], data=bytes(32)),  # Q4_2, long removed
     "tensor 'w' has a ggml type (4) this llama.cpp does not know"),
    (_gguf([ARCH], [_tensor(b"w", (1, 1, 1, 1, 1), 0, 0)], data=bytes(32)),
     "tensor 'w' has 5 dimensions; at most 4"),
    (_gguf([ARCH], [_tensor(b"w", (HUGE, HUGE), 0, 0)], data=bytes(32)),
     f"tensor 'w' has an impossible shape ({HUGE}, {HUGE})"),
    (_gguf([ARCH], [_tensor(b"q", (33,), 2, 0)], data=bytes(64)),
     "tensor 'q': a row of 33 is not a multiple of the type's block of 32"),
    (_gguf([ARCH], [_tensor(b"w", (8,), 0, 7)], data=bytes(32)),
     "tensor 'w' has data offset 7, expected 0"),
    (_gguf([ARCH], [_tensor(b"w", (8,), 0, 0), _tensor(b"w", (8,), 0, 32)], data=bytes(64)),
     "tensor 'w' appears twice"),
    (_gguf([ARCH], [_tensor(b"w" * 64, (8,), 0, 0)], data=bytes(32)),
     "the name of tensor #0 is 64 bytes long; the limit is 63"),
    (GOOD[:-1], "truncated: the tensor data ends at byte 786, but the file has only 785 bytes"),
    (GOOD[:150], "truncated or damaged GGUF: 'tokenizer.ggml.tokens' (2 strings) would end at "
                 "byte 163, past the end of the file (150 bytes)"),
])
def test_hostile_headers_are_one_line(tmp_path: Path, data: bytes, problem: str) -> None:
    check_model_file(_write(tmp_path, GOOD, "good.gguf"))  # ggml's type table, loaded unmeasured
    path = _write(tmp_path, data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as info:
            check_model_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == f"{path}: {problem}"
    assert peak < 1 << 20  # nothing the header claims was allocated


def _fuzzed() -> Iterator[bytes]:
    rng = random.Random(7)
    for _ in range(300):
        yield rng.randbytes(rng.randrange(1, 300))
    for _ in range(300):
        yield b"GGUF" + struct.pack("<I", 3) + rng.randbytes(rng.randrange(300))
    for _ in range(1500):
        data = bytearray(GOOD)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        yield bytes(data)


def test_fuzzed_files_are_whole_or_one_line(tmp_path: Path) -> None:
    check_model_file(_write(tmp_path, GOOD, "good.gguf"))  # ggml's type table, loaded unmeasured
    outcomes = {"whole": 0, "refused": 0}
    tracemalloc.start()
    try:
        for data in _fuzzed():
            path = _write(tmp_path, data)
            try:
                header = check_model_file(path)
            except ModelError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
                outcomes["refused"] += 1
            else:
                assert header.data_end <= len(data)
                outcomes["whole"] += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcomes["whole"] > 100 and outcomes["refused"] > 800  # both paths exercised
    assert peak < 1 << 20


def _truncated_copy(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "cut.gguf"
    with smollm2_path().open("rb") as src, path.open("wb") as dst:
        while size > 0:
            block = src.read(min(size, 1 << 20))
            dst.write(block)
            size -= len(block)
    return path


def test_a_real_model_cut_short(tmp_path: Path) -> None:
    whole = check_model_file(smollm2_path())
    for size in (whole.file_size - 1, whole.data_offset + 4096):
        cut = _truncated_copy(tmp_path, size)
        assert read_metadata(cut)["llama.block_count"] == 30  # the header is intact...
        with pytest.raises(ModelError) as info:
            check_model_file(cut)  # ...but the tensor data is not
        assert str(info.value) == (f"{cut}: truncated: the tensor data ends at byte "
                                   f"{whole.file_size}, but the file has only {size} bytes")
    cut = _truncated_copy(tmp_path, 1 << 20)  # inside the vocabulary
    with pytest.raises(ModelError, match=r"truncated or damaged GGUF: 'tokenizer\.ggml\.merges"
                                         r"|'tokenizer\.ggml\.tokens"):
        read_metadata(cut)


def test_files_that_are_not_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.gguf")  # no writer: a plain open() would wait forever
    (tmp_path / "dir.gguf").mkdir()
    for name, problem in (("fifo.gguf", "Not a regular file"), ("dir.gguf", "Is a directory"),
                          ("absent.gguf", "No such file or directory")):
        with pytest.raises(ModelError) as info:
            check_model_file(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}: cannot read: {problem}"


@pytest.mark.parametrize(("kv", "problem"), [
    (_kv(b"llama.block_count", 8, _str(b"thirty")), "llama.block_count is 'thirty', not a count"),
    (_kv(b"llama.embedding_length", 11, struct.pack("<q", -5)),
     "llama.embedding_length is -5, not a count"),
    (_kv(b"llama.attention.head_count", 6, struct.pack("<f", 1.5)),
     "llama.attention.head_count is 1.5, not a count"),
])
def test_memory_plan_refuses_nonsense_metadata(tmp_path: Path, kv: bytes, problem: str) -> None:
    path = _write(tmp_path, _gguf([ARCH, kv]))
    with pytest.raises(ModelError) as info:
        plan(path, 1024)
    assert str(info.value) == f"{path}: {problem}"

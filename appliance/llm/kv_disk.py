"""Prompt-prefix KV states kept on disk, within a byte budget, least recently used out first.

The state after [system prompt + a manual's passage] is computed once and kept
under ``<data_dir>/kv/``: a later question about the same passage restores it
and evaluates only what follows, on a Pi the difference between seconds and
tens of seconds of prompt reading. A file is named by the hash of the model's
identity, the LoRA adapter it was computed under (its variant) and the prefix's
tokens, so a changed system prompt, passage, adapter or model never finds a
stale state; its header repeats them, and a file that does not
match is treated as missing and removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from pathlib import Path

import llama_cpp

from appliance.config.schema import Settings
from appliance.llm.kv_state import FLASH_ATTENTION, KvSnapshot
from appliance.logs import get_logger

log = get_logger("kv_cache")

MAGIC = b"APKV1\n"


def model_identity(path: Path) -> str:
    """What a state depends on besides its tokens: the model file, llama.cpp, the KV layout."""
    st = path.stat()
    layout = ":flash-attn" if FLASH_ATTENTION else ""
    return (f"{path.name}:{st.st_size}:{st.st_mtime_ns}:"
            f"llama-cpp-python-{llama_cpp.__version__}{layout}")


class DiskKvCache:
    """States in ``directory`` whose files together stay within ``budget_bytes``."""

    def __init__(self, directory: Path, budget_bytes: int, model: str) -> None:
        self.directory, self.budget_bytes, self.model = directory, budget_bytes, model
        self._model_bytes = model.encode()
        directory.mkdir(parents=True, exist_ok=True)

    def _identity(self, variant: str) -> bytes:
        """The model's identity, and the adapter's (none: as before adapters existed)."""
        return self._model_bytes + (b"\n" + variant.encode() if variant else b"")

    def _file(self, tokens: tuple[int, ...], variant: str) -> Path:
        digest = hashlib.sha256(self._identity(variant))
        digest.update(struct.pack(f"<{len(tokens)}i", *tokens))
        return self.directory / f"{digest.hexdigest()[:40]}.kv"

    def load(self, tokens: tuple[int, ...], variant: str = "") -> KvSnapshot | None:
        """The state after ``tokens`` computed under ``variant``, if it is here and whole."""
        path = self._file(tokens, variant)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        snapshot = self._decode(raw, tokens, variant)
        if snapshot is None:
            log.warning("kv_state_dropped", file=path.name, reason="does not match")
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return snapshot

    def _decode(self, raw: bytes, tokens: tuple[int, ...], variant: str) -> KvSnapshot | None:
        head = len(MAGIC) + 8
        if not raw.startswith(MAGIC) or len(raw) < head:
            return None
        model_len, count = struct.unpack_from("<II", raw, len(MAGIC))
        body = head + model_len
        if raw[head:body] != self._identity(variant) or count != len(tokens):
            return None
        stored = struct.unpack_from(f"<{count}i", raw, body)
        if stored != tokens:
            return None
        return KvSnapshot(tokens, raw[body + 4 * count:], variant)

    def save(self, snapshot: KvSnapshot) -> None:
        """Keep ``snapshot`` (atomically), then trim the directory to the budget."""
        identity = self._identity(snapshot.variant)
        size = len(MAGIC) + 8 + len(identity) + 4 * len(snapshot.tokens) + snapshot.size
        if size > self.budget_bytes:
            return
        path = self._file(snapshot.tokens, snapshot.variant)
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as out:
                out.write(MAGIC + struct.pack("<II", len(identity), len(snapshot.tokens)))
                out.write(identity)
                out.write(struct.pack(f"<{len(snapshot.tokens)}i", *snapshot.tokens))
                out.write(snapshot.data)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk: the cache is only worth what fits
            tmp.unlink(missing_ok=True)
            log.warning("kv_state_not_saved", error=exc.strerror)
            return
        self.trim(keep=path)

    def trim(self, keep: Path | None = None) -> None:
        """Remove the least recently used states until the rest fit the budget."""
        files = []
        for entry in self.directory.glob("*.kv"):
            with contextlib.suppress(OSError):
                st = entry.stat()
                files.append((st.st_mtime_ns, st.st_size, entry))
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files):
            if total <= self.budget_bytes:
                break
            if entry != keep:
                entry.unlink(missing_ok=True)
                total -= size

    @property
    def used_bytes(self) -> int:
        """What the states take on disk now."""
        return sum(p.stat().st_size for p in self.directory.glob("*.kv"))


def conversation_cache(settings: Settings, model: Path) -> DiskKvCache | None:
    """Where conversations' states wait for their next turn (``None``: off, or toy mode)."""
    budget = settings.conversation.cache_mb
    if not budget or settings.voice.kid_safe:  # nothing a child says is written down
        return None
    return DiskKvCache(settings.data_dir / "kv-conversations", budget << 20,
                       model_identity(model))


def passage_cache(settings: Settings, model: Path) -> DiskKvCache | None:
    """The cache of passage states ``settings.knowledge`` asks for (``None`` when off)."""
    knowledge = settings.knowledge
    if not knowledge.enabled or not knowledge.cache_mb:
        return None
    return DiskKvCache(settings.data_dir / "kv", knowledge.cache_mb << 20,
                       model_identity(model))

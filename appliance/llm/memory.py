"""The resource guard: check that a model and its KV cache fit in memory before loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ModelError, ResourceError
from appliance.hardware import mem_available_bytes
from appliance.llm.gguf import read_metadata

HEADROOM_BYTES = 256 << 20  # compute buffers, Python, the supervisor
KV_BYTES_PER_VALUE = 2  # f16 cache


@dataclass(frozen=True)
class MemoryPlan:
    """What loading a model with a context of ``n_ctx`` tokens needs."""

    model_bytes: int
    kv_bytes_per_token: int
    n_ctx: int

    @property
    def total_bytes(self) -> int:
        """Model, KV cache and headroom."""
        return self.model_bytes + self.kv_bytes_per_token * self.n_ctx + HEADROOM_BYTES

    def largest_n_ctx(self, available: int) -> int:
        """The largest context that fits in ``available`` bytes (0 if none)."""
        room = available - self.model_bytes - HEADROOM_BYTES
        return max(0, room // self.kv_bytes_per_token) if self.kv_bytes_per_token else 0


def plan(model: Path, n_ctx: int) -> MemoryPlan:
    """Estimate from the GGUF header: K and V per layer, per KV head, per token."""
    meta = read_metadata(model)
    arch = meta.get("general.architecture", "llama")
    if not isinstance(arch, str):
        raise ModelError(f"{model}: general.architecture is {arch!r}, not a name")

    def count(key: str, default: int) -> int:
        value: Any = meta.get(f"{arch}.{key}", default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
            raise ModelError(f"{model}: {arch}.{key} is {value!r}, not a count")
        return value

    layers = count("block_count", 0)
    heads = count("attention.head_count", 1) or 1
    kv_heads = count("attention.head_count_kv", heads)
    embd = count("embedding_length", 0)
    per_token = 2 * layers * kv_heads * (embd // heads) * KV_BYTES_PER_VALUE
    return MemoryPlan(model.stat().st_size, per_token, n_ctx)


def kv_sequences(parallel: int) -> int:
    """How many ``n_ctx`` of KV cache ``parallel`` sequences take.

    One alone; beside others, each answer has its own ``n_ctx``, and the home
    sequence (where prompts are read, and the caches live) one more.
    """
    return 1 if parallel == 1 else parallel + 1


def check_fits(model: Path, n_ctx: int, parallel: int = 1,
               meminfo: Path = Path("/proc/meminfo")) -> MemoryPlan:
    """Refuse (with the largest ``n_ctx`` that fits) rather than be killed by the OOM killer."""
    spans = kv_sequences(parallel)
    need = plan(model, n_ctx * spans)
    available = mem_available_bytes(meminfo)
    if need.total_bytes > available:
        mib = 1 << 20
        fits = need.largest_n_ctx(available) // spans
        hint = (f"the largest llm.n_ctx that fits is {fits}" if fits >= 256
                else "no context fits: use a smaller model or free memory")
        if parallel > 1:
            hint += f" with llm.parallel {parallel}; or lower llm.parallel"
        times = f" x {spans} (llm.parallel {parallel})" if parallel > 1 else ""
        raise ResourceError(
            f"{model.name} with llm.n_ctx {n_ctx}{times} needs about {need.total_bytes // mib} "
            f"MiB (model {need.model_bytes // mib} MiB, KV cache "
            f"{need.kv_bytes_per_token * n_ctx * spans // mib} MiB) but only "
            f"{available // mib} MiB is available; {hint}")
    return need

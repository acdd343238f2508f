"""What the APIs say about our one model: its names, file, family, size and quantization.

Home Assistant's Ollama integration pulls any model it does not find in
``/api/tags``, so the card's names must match what clients send: the plain
name and Ollama's ``name:latest`` are the same model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from appliance.catalog import resolve_llm
from appliance.config import Settings
from appliance.errors import ApplianceError
from appliance.llm.gguf import read_metadata

# llama.cpp's llama_ftype numbers, as GGUF files record them in general.file_type.
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
               10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
               15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


@dataclass(frozen=True)
class ModelCard:
    """Our model as the APIs list it."""

    name: str
    size: int
    digest: str
    modified_at: datetime
    family: str
    parameter_size: str
    quantization: str
    n_ctx: int

    @property
    def tagged(self) -> str:
        """The Ollama-style name, with its tag."""
        return f"{self.name}:latest"

    def matches(self, requested: str) -> bool:
        """Whether a client's model name means this model."""
        return requested.strip().lower() in (self.name.lower(), self.tagged.lower())

    def details(self) -> dict[str, object]:
        """Ollama's ``details`` object."""
        return {"parent_model": "", "format": "gguf", "family": self.family,
                "families": [self.family], "parameter_size": self.parameter_size,
                "quantization_level": self.quantization}

    @property
    def modified_iso(self) -> str:
        """``modified_at`` as ISO 8601."""
        return self.modified_at.isoformat()


def model_card(settings: Settings) -> ModelCard:
    """The card of the model ``settings.llm`` names (read from its GGUF header, not loaded)."""
    model = resolve_llm(settings)
    path: Path = model.path
    stat = path.stat()
    try:
        meta = read_metadata(path)
    except (ApplianceError, OSError):
        meta = {}  # the worker reports a broken model file; the card just knows less
    digest = (model.entry.sha256 if model.entry is not None and model.entry.sha256 else
              hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest())
    return ModelCard(
        name=model.name, size=stat.st_size, digest=digest,
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        family=str(meta.get("general.architecture") or "unknown"),
        parameter_size=str(meta.get("general.size_label") or ""),
        quantization=_FILE_TYPES.get(meta.get("general.file_type"), "unknown"),  # type: ignore[arg-type]
        n_ctx=settings.llm.n_ctx)

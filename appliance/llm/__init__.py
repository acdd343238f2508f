"""The local language model: loading, prompting and streaming generation.

Importing the package loads only its types. :class:`Engine` (and with it
llama_cpp and numpy) is imported the first time it is asked for, so the
command line and the supervisor, which pass requests and answers around,
never load the model's library: only the worker, ``appliance ask`` and the
benchmarks do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.llm.types import ChatRequest, Chunk, Completion, FinishReason, new_request_id

if TYPE_CHECKING:
    from appliance.llm.engine import Engine

__all__ = ["ChatRequest", "Chunk", "Completion", "Engine", "FinishReason", "new_request_id"]


def __getattr__(name: str) -> object:
    """``Engine``, imported on first use (see the module's note)."""
    if name == "Engine":
        from appliance.llm.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The local language model: loading, prompting and streaming generation."""

from appliance.llm.engine import Engine
from appliance.llm.types import ChatRequest, Chunk, Completion, FinishReason, new_request_id

__all__ = ["ChatRequest", "Chunk", "Completion", "Engine", "FinishReason", "new_request_id"]

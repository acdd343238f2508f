"""Grammar-constrained output: a JSON schema turned into a llama.cpp grammar, once per schema."""

from __future__ import annotations

from functools import lru_cache

from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from appliance.errors import ModelError


@lru_cache(maxsize=32)
def _compiled(schema: str) -> LlamaGrammar:
    try:
        return LlamaGrammar.from_string(json_schema_to_gbnf(schema), verbose=False)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ModelError(f"the output schema cannot be turned into a grammar: {exc}") from None


def grammar_for(schema: str | None) -> LlamaGrammar | None:
    """The grammar for a JSON schema (JSON text), or ``None`` for free text."""
    return None if schema is None else _compiled(schema)

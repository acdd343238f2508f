"""Chat templates for models whose GGUF carries none.

Most instruct GGUFs store their chat template (``tokenizer.chat_template``) and
:class:`~appliance.llm.prompt.ChatPrompt` uses it. Some conversions leave it
out; then the model's architecture (``general.architecture``) names one of the
templates here, written after the model family's published format. A model
with neither is refused: guessing a template makes a model talk nonsense.
"""

from __future__ import annotations

GEMMA = (
    # Gemma has no system role: the system message opens the first user turn.
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
"""Gemma 2 and 3: ``<start_of_turn>user ... <end_of_turn>``, the assistant is ``model``."""

BY_ARCHITECTURE = {"gemma": GEMMA, "gemma2": GEMMA, "gemma3": GEMMA}


def for_architecture(architecture: str | None) -> str | None:
    """The template for a GGUF without one, by its ``general.architecture`` (or ``None``)."""
    return BY_ARCHITECTURE.get(architecture or "")

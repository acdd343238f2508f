"""Model names on the HTTP APIs: our model, and one variant per LoRA adapter.

Servers that serve LoRA adapters list each as a model of its own, and clients
(Home Assistant's Ollama integration, Open WebUI, the OpenAI libraries) choose
one by name. Here the base model is ``smollm2`` (or ``smollm2:latest``) and the
adapter ``plant_care`` of ``llm.adapters`` is ``smollm2:plant_care``; a request
for that name is answered with that adapter.
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.api.model_card import ModelCard


def variant_names(card: ModelCard, adapters: Iterable[str]) -> list[str]:
    """The names ``/api/tags`` and ``/v1/models`` list after the base model: one per adapter."""
    return [f"{card.name}:{adapter}" for adapter in adapters]


def answered_name(base: str, card: ModelCard, adapter: str | None) -> str:
    """The model name an answer carries: ``base`` (the API's own spelling), or the variant's."""
    return base if adapter is None else f"{card.name}:{adapter}"


def adapter_of(card: ModelCard, adapters: Iterable[str], requested: str) -> str | None:
    """The adapter ``requested`` names: ``None`` for the base model.

    Raises :class:`LookupError` when it names neither the model nor one of its
    variants. Names compare without regard to case, as the card's do.
    """
    if card.matches(requested):
        return None
    wanted = requested.strip().lower()
    for adapter in adapters:
        if wanted == f"{card.name}:{adapter}".lower():
            return adapter
    raise LookupError(requested)

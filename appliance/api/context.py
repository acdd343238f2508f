"""What the HTTP route handlers share: the gate, our model's card, the settings, the status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.api.errors import ApiError, Problem
from appliance.api.gate import ApiGate
from appliance.api.model_card import ModelCard
from appliance.api.model_names import adapter_of
from appliance.config import Settings
from appliance.service.status import Status


@dataclass(frozen=True)
class Context:
    """The parts every route needs."""

    gate: ApiGate
    card: ModelCard
    settings: Settings
    status: Status

    def check_model(self, requested: Any, param: str = "model") -> str | None:
        """Refuse a request for a model we do not have; the LoRA adapter its name picks.

        ``None``: the base model (see :mod:`appliance.api.model_names`).
        """
        if not isinstance(requested, str) or not requested.strip():
            raise ApiError(Problem.BAD_REQUEST, f"{param}: the model's name is required",
                           param=param)
        try:
            return adapter_of(self.card, self.settings.llm.adapters, requested)
        except LookupError:
            raise ApiError(Problem.UNKNOWN_MODEL,
                           f"model {requested!r} not found; this appliance serves "
                           f"{self.card.name!r}", param=param) from None


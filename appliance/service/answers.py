"""The one place where answers are made.

Every :class:`~appliance.protocol.answer.Answer` the service gives comes from an
:class:`AnswerMaker`: a generation's, an action's (its phrase, or the model's
choice), or one that no generation could give (an error, a cancel, cooling
down, a question the manuals do not cover). The maker stamps what every answer
carries (device, model, throttle level, the rule that asked); the outlets only
serialize.
"""

from __future__ import annotations

from appliance.actions.service import Outcome
from appliance.errors import ApplianceError
from appliance.llm import FinishReason
from appliance.power.monitor import Energy as Metered
from appliance.protocol.answer import Answer, Energy, Failure
from appliance.protocol.messages import Request
from appliance.service.router import Routed
from appliance.service.status import Status

Decided = str | Outcome | Failure
"""What a grammar-constrained decision came to: plain text, an action's outcome, or a refusal."""


class AnswerMaker:
    """Makes each answer; ``sources``: the manuals are on, so answers name their sources."""

    def __init__(self, status: Status, device_id: str, *, sources: bool) -> None:
        self.status, self.device_id, self.sources = status, device_id, sources

    def _answer(self, request: Request, text: str, finish_reason: FinishReason,
                **fields: object) -> Answer:
        model = fields.pop("model", None) or self.status.model
        return Answer(request.id, request.source, text, finish_reason, model=str(model),
                      device_id=self.device_id, throttle_level=self.status.throttle_level,
                      rule=request.rule, conversation=request.conversation,
                      **fields)  # type: ignore[arg-type]

    def unanswered(self, request: Request, finish_reason: FinishReason, text: str = "",
                   **fields: object) -> Answer:
        """No generation gave it: cancelled, cooling down (``throttled``), refused."""
        return self._answer(request, text, finish_reason, **fields)

    def failed(self, request: Request, error: ApplianceError | Failure) -> Answer:
        """It could not be answered; ``error`` says why (its code is the kind)."""
        failure = error if isinstance(error, Failure) else Failure(error.code, str(error))
        return self._answer(request, "", "error", error=failure)

    def acted(self, request: Request, outcome: Outcome) -> Answer:
        """An action's own phrase acted, without the model."""
        return self._answer(request, outcome.text, "stop", action=outcome.report())

    def generated(self, request: Request, routed: Routed, *, energy: Metered | None,
                  sources: tuple[str, ...], decided: Decided | None = None) -> Answer:
        """A generation's answer; ``decided``: what its constrained decision came to."""
        done = routed.completion
        text, tokens, finish = done.text, done.tokens, done.finish_reason
        fields: dict[str, object] = {}
        if isinstance(decided, str):
            text = decided
        elif isinstance(decided, Outcome):
            text, fields["action"] = decided.text, decided.report()
        elif isinstance(decided, Failure):
            text, tokens, finish, fields["error"] = "", 0, "error", decided
        if energy is not None and energy.joules > 0:
            fields["energy"] = Energy(energy.joules, energy.avg_w)
        if self.sources:
            fields["sources"] = sources
        return self._answer(request, text, finish, tokens=tokens, model=done.model,
                            completion=done, tier=routed.tier, escalation=routed.escalation,
                            thinking=done.thinking or None, **fields)

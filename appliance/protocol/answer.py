"""An answer, typed from where it is made to where it leaves.

The dispatcher makes every :class:`Answer` in one place
(:class:`appliance.service.answers.AnswerMaker`); the outlets serialize it,
each in its own shape: :meth:`Answer.to_json` for MQTT (and the journal's
outbox), the HTTP APIs' bodies, Wyoming's ``handled``, and speech. A failure
carries an :class:`~appliance.errors.ErrorCode`, so that an API maps the kind to
its status without reading the message.

    >>> Answer("q1", "mqtt", "4", "stop", tokens=1).to_json()["finish_reason"]
    'stop'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.errors import ErrorCode
from appliance.llm.types import Completion, FinishReason


@dataclass(frozen=True)
class Failure:
    """Why a request was not answered: the kind, and one line for people."""

    code: ErrorCode
    message: str


@dataclass(frozen=True)
class ActionReport:
    """What became of an action the answer is about (the verifier's verdict)."""

    action: str
    verdict: str
    needs: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Escalation:
    """Why a request was sent to the bigger model, and what happened when it failed."""

    reason: str
    fallback: str | None = None
    confidence: float | None = None
    local_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The answer's ``escalation`` object."""
        body: dict[str, Any] = {"reason": self.reason}
        if self.confidence is not None or self.local_tokens is not None:
            body.update(confidence=self.confidence, local_tokens=self.local_tokens)
        if self.fallback is not None:
            body["fallback"] = self.fallback
        return body


@dataclass(frozen=True)
class Energy:
    """What the answer cost, where a meter could tell."""

    joules: float
    avg_w: float


@dataclass(frozen=True)
class Answer:
    """The final answer to one request, whoever asked and however it ended.

    ``completion`` is the generation's own record (timings, threads, prompt
    tokens), absent when no generation ran (an action's phrase, a refusal, an
    error, cooling down). ``sources`` is ``None`` when the manuals are off (no
    ``sources`` field at all). ``conversation`` and ``thinking`` belong to the
    conversation and thinking features and stay empty until a request uses them.
    """

    id: str
    source: str
    text: str
    finish_reason: FinishReason
    tokens: int = 0
    model: str = ""
    device_id: str = ""
    throttle_level: str = "normal"
    rule: str | None = None
    completion: Completion | None = None
    tier: str | None = None
    escalation: Escalation | None = None
    energy: Energy | None = None
    sources: tuple[str, ...] | None = None
    action: ActionReport | None = None
    refused: str | None = None
    error: Failure | None = None
    conversation: str | None = None
    thinking: str | None = None

    @property
    def failed(self) -> bool:
        """No generation could answer it (``finish_reason: error``)."""
        return self.finish_reason == "error"

    def to_json(self) -> dict[str, Any]:
        """The public fields, as MQTT publishes them (the same on every topic)."""
        body: dict[str, Any] = {"id": self.id, "text": self.text, "tokens": self.tokens,
                                "finish_reason": self.finish_reason}
        done = self.completion
        if done is not None:
            body.update(ttft_ms=round(done.ttft_ms, 1), tokens_per_s=round(done.tokens_per_s, 2),
                        total_ms=round(done.total_ms, 1),
                        ms_per_token=round(done.total_ms / done.tokens, 1) if done.tokens
                        else None)
            if done.n_threads:
                body["n_threads"] = done.n_threads
            if done.thinking_tokens:  # how long it thought; the thought itself never goes here
                body.update(thinking_tokens=done.thinking_tokens,
                            thinking_ms=round(done.thinking_ms, 1))
        if self.tier is not None:
            body["tier"] = self.tier
        if self.escalation is not None:
            body["escalation"] = self.escalation.to_json()
        energy = self.energy
        if energy is not None:
            tokens = done.tokens if done is not None else self.tokens
            body.update(energy_j=round(energy.joules, 3), avg_w=round(energy.avg_w, 2),
                        tokens_per_j=round(tokens / energy.joules, 3))
        if self.sources is not None:
            body["sources"] = list(self.sources)
        if self.action is not None:
            body.update(action=self.action.action, verdict=self.action.verdict)
            if self.action.needs:
                body["needs"] = list(self.action.needs)
            if self.action.reason:
                body["reason"] = self.action.reason
        if self.refused is not None:
            body["refused"] = self.refused
        if self.error is not None:
            body.update(error=self.error.message, error_code=str(self.error.code))
        if self.conversation is not None:
            body["conversation"] = self.conversation
        body.update(throttle_level=self.throttle_level, source=self.source,
                    device_id=self.device_id, model=self.model)
        if self.rule is not None:
            body["rule"] = self.rule
        return body

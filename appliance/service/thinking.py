"""Who may think, and for how long: ``llm.thinking`` applied to one request.

A thinking model (its catalog entry has ``thinking:``) thinks before it answers.
That costs time, which a spoken answer cannot spare and a rule's decision can.
The policy, written once for the dispatcher and ``appliance listen``:

- ``llm.thinking: off`` — nobody thinks; ``on`` — everyone may;
  ``auto`` — everyone but voice (a spoken answer must start quickly);
- an API client's ``think: false`` turns it off for its request, ``think: true``
  on (unless the device says ``off``);
- the budget: ``llm.thinking_budget``, and ``llm.thinking_budget_voice`` for
  whatever is spoken (voice, Wyoming);
- a thermal level whose ``thinking`` share is 0 (``hot`` and above by default)
  turns it off before the request starts. A smaller share cuts the budget in
  the engine, live, so that heat also shortens a thought already running.

The result is :attr:`~appliance.llm.types.ChatRequest.thinking_budget` (0: the
model is told not to think). A model that does not think ignores it.

    >>> from appliance.config.schema import DEFAULT_THERMAL_LEVELS as LEVELS
    >>> llm, normal = LlmSettings(), LEVELS[0]
    >>> budget(llm, "voice", None, normal), budget(llm, "sensor", None, normal)
    (0, 512)
"""

from __future__ import annotations

from appliance.config.schema import LlmSettings, ThermalLevel


def budget(llm: LlmSettings, entrance: str, wish: bool | None, level: ThermalLevel) -> int:
    """The thinking budget of a request that came in through ``entrance``.

    ``entrance`` is the request's source or the API it came through (``voice``,
    ``sensor``, ``mqtt``, ``http``, ``wyoming``); ``wish`` a client's own ``think``.
    """
    spoken = entrance in ("voice", "wyoming")
    if llm.thinking is False or wish is False or level.thinking <= 0:
        return 0
    if llm.thinking == "auto" and spoken and wish is None:
        return 0
    return llm.thinking_budget_voice if spoken else llm.thinking_budget

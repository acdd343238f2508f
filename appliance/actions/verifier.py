"""The verifier: the one gate between a proposed action and the device that would move.

An action passes when it is on the allow list for its source (in toy mode,
only ``voice.kid_safe_actions``), its arguments fit its schema, every
``require`` holds over readings fresher than its ``fresh_s``, and it is not in
its cooldown. A failed check is a refusal that says what would help, built
from the configuration (``need``), never invented by a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.actions.registry import Registry, check_args
from appliance.actions.world import WorldState
from appliance.config.schema import Action
from appliance.rules.expr import Condition, parse_condition

Verdict = Literal["done", "refused", "awaiting_confirmation", "declined", "failed"]


@dataclass(frozen=True)
class Check:
    """The verifier's answer about one proposal."""

    ok: bool
    reason: str = ""
    needs: tuple[str, ...] = ()
    text: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _describe_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.0f} hours"


def _window(seconds: float) -> str:
    return f"the last {_describe_age(seconds)}" if seconds != 60 else "the last minute"


class Verifier:
    """Checks proposals against ``registry`` and ``world``."""

    def __init__(self, registry: Registry, world: WorldState, *, kid_safe: bool = False,
                 kid_safe_actions: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.world, self.clock = registry, world, clock
        self.kid_safe = kid_safe
        self.kid_safe_actions = frozenset(kid_safe_actions)
        self._conditions: dict[str, Condition] = {}
        self._last_done: dict[str, float] = {}

    def _condition(self, text: str) -> Condition:
        if text not in self._conditions:
            self._conditions[text] = parse_condition(text)
        return self._conditions[text]

    def check(self, name: str, args: Any, source: str,
              allowed: Iterable[str] | None = None) -> Check:
        """Whether ``name(args)`` from ``source`` may run now; ``allowed`` narrows the list."""
        action = self.registry.get(name)
        if action is None or (allowed is not None and name not in set(allowed)):
            return Check(False, f"{name!r} is not an action I may take",
                         text=f"I can't do that: {name} is not on my list of actions.")
        label = action.description or action.name
        if self.kid_safe and source == "voice" and name not in self.kid_safe_actions:
            return Check(False, "not allowed in toy mode",
                         text="That's something a grown-up has to do.")
        problem = check_args(action, args)
        if problem is not None:
            return Check(False, f"bad arguments: {problem}",
                         text=f"I can't {label.lower()}: {problem}.")
        return self._requirements(action, label)

    def _requirements(self, action: Action, label: str) -> Check:
        for requirement in action.require:
            condition = self._condition(requirement.when)
            fresh = self.world.fresh(requirement.fresh_s)
            missing = sorted(n for n in condition.names() if n not in fresh)
            if missing:
                ages = {n: self.world.age(n) for n in missing}
                stale = {n: a for n, a in ages.items() if a is not None}
                why = (f"the reading is {_describe_age(max(stale.values()))} old"
                       if stale else "there is no reading")
                return Check(
                    False, f"{'stale' if stale else 'missing'}: {', '.join(missing)} ({why})",
                    needs=(requirement.need,),
                    text=f"I can't {label.lower()}: I have no {requirement.need} from "
                         f"{_window(requirement.fresh_s)}. Check the {missing[0]} sensor.",
                    details={"stale" if stale else "missing": missing})
            if not condition(fresh):
                return Check(False, f"condition not met: {requirement.when}",
                             text=f"I won't {label.lower()}: {requirement.need} does not "
                                  f"allow it ({requirement.when} is not true).")
        last = self._last_done.get(action.name)
        if last is not None and self.clock() - last < action.cooldown_s:
            wait = action.cooldown_s - (self.clock() - last)
            return Check(False, f"in its cooldown for {wait:.0f} s more",
                         text=f"I did that a moment ago; ask again in {wait:.0f} seconds.")
        return Check(True)

    def done(self, name: str) -> None:
        """``name`` ran: its cooldown starts now."""
        self._last_done[name] = self.clock()

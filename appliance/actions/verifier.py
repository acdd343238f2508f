"""The verifier: the one gate between a proposed action and the device that would move.

An action passes when it is on the allow list for its source (in toy mode,
only ``voice.kid_safe_actions``), its arguments fit its schema, every
``require`` holds over readings fresher than its ``fresh_s``, and it is not in
its cooldown. A failed check is a refusal that says what would help, built
from the configuration (``need``), never invented by a model.

It fails closed: a reading that is missing, stale, from before a reboot or
ahead of the clock, and a field a ``require`` reads that is absent, null or of
a kind it cannot compare (:mod:`appliance.rules.reads`), are all missing, so a
negation such as ``not (tank.level > 90)`` never passes for want of a level.
Cooldowns count from the last run kept in the journal, across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.actions.registry import Registry, check_args
from appliance.actions.world import UNKNOWN_AGE, WorldState
from appliance.config.schema import Action, Requirement
from appliance.protocol.messages import ENTRANCES
from appliance.rules.expr import Condition, parse_condition
from appliance.rules.reads import unusable as fields_unusable

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


def _why_stale(age: float | None) -> str:
    """Why a reading of this age (``None``: none at all) does not count."""
    if age is None:
        return "there is no reading"
    if age == UNKNOWN_AGE:
        return "the reading is from before a reboot or ahead of the clock"
    return f"the reading is {_describe_age(age)} old"


def _window(seconds: float) -> str:
    return f"the last {_describe_age(seconds)}" if seconds != 60 else "the last minute"


class Verifier:
    """Checks proposals against ``registry`` and ``world``."""

    def __init__(self, registry: Registry, world: WorldState, *, kid_safe: bool = False,
                 kid_safe_actions: Iterable[str] = (), closed: dict[str, str] | None = None,
                 sources: Iterable[str] = ENTRANCES,
                 child_sources: Iterable[str] = ("voice", "wyoming", "http")) -> None:
        """``closed`` maps each entrance that may not act to why (naming its setting).

        Only ``sources`` may propose at all: any other entrance is refused. In
        toy mode, ``child_sources`` (the entrances that carry a person's words)
        propose only ``kid_safe_actions``.
        """
        self.registry, self.world = registry, world
        self.kid_safe = kid_safe
        self.kid_safe_actions = frozenset(kid_safe_actions)
        self.closed = dict(closed or {})
        self.sources, self.child_sources = frozenset(sources), frozenset(child_sources)
        self._conditions: dict[str, Condition] = {}

    def _condition(self, text: str) -> Condition:
        if text not in self._conditions:
            self._conditions[text] = parse_condition(text)
        return self._conditions[text]

    def check(self, name: str, args: Any, source: str,
              allowed: Iterable[str] | None = None, *, gate_only: bool = False) -> Check:
        """Whether ``name(args)`` from ``source`` may run now; ``allowed`` narrows the list.

        ``gate_only``: only whether ``source`` may propose ``name`` at all (the
        entrance, the allow list, toy mode), arguments and readings aside.
        """
        shut = self.closed.get(source) or (
            None if source in self.sources else f"actions are off for entrance {source!r}")
        if shut is not None:
            return Check(False, shut, text=f"I can't act on that from here: {shut}.")
        action = self.registry.get(name)
        if action is None or (allowed is not None and name not in set(allowed)):
            return Check(False, f"{name!r} is not an action I may take",
                         text=f"I can't do that: {name} is not on my list of actions.")
        label = action.description or action.name
        if self.kid_safe and source in self.child_sources and name not in self.kid_safe_actions:
            return Check(False, "not allowed in toy mode",
                         text="That's something a grown-up has to do.")
        if gate_only:
            return Check(True)
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
                stale = [a for a in map(self.world.age, missing) if a is not None]
                kind = "stale" if stale else "missing"
                return self._missing(label, requirement, missing, f"{kind}: {', '.join(missing)} "
                                     f"({_why_stale(max(stale, default=None))})", kind)
            # A field that is absent, null or of another kind makes every comparison
            # false, and so a negation true: refused as missing, never evaluated.
            unusable = fields_unusable(condition, fresh)
            if unusable:
                return self._missing(label, requirement, sorted(unusable), "missing: " + "; ".join(
                    f"{path} {why}" for path, why in sorted(unusable.items())), "missing")
            if not condition(fresh):
                return Check(False, f"condition not met: {requirement.when}",
                             text=f"I won't {label.lower()}: {requirement.need} does not "
                                  f"allow it ({requirement.when} is not true).")
        since = self.world.since_run(action.name)
        if since is not None and since < action.cooldown_s:
            wait = action.cooldown_s - since
            return Check(False, f"in its cooldown for {wait:.0f} s more",
                         text=f"I did that a moment ago; ask again in {wait:.0f} seconds.")
        return Check(True)

    @staticmethod
    def _missing(label: str, requirement: Requirement, fields: list[str], reason: str,
                 kind: str) -> Check:
        """A refusal for want of ``requirement``'s readings (``fields``), naming its need."""
        sensor = fields[0].split(".")[0].split("[")[0]
        return Check(False, reason, needs=(requirement.need,),
                     text=f"I can't {label.lower()}: I have no {requirement.need} from "
                          f"{_window(requirement.fresh_s)}. Check the {sensor} sensor.",
                     details={kind: fields})

    def done(self, name: str) -> None:
        """``name`` ran: its cooldown starts now, and is kept across restarts."""
        self.world.ran(name)

"""The World page: every sensor's latest reading with its age, stale ones marked.

A reading is **stale** when it is older than the ``fresh_s`` of any action
that needs it (a ``require`` whose condition reads it, :class:`Requirement
<appliance.config.schema.Requirement>`): the verifier would refuse that action
for want of it. The strictest such ``fresh_s`` is the limit shown. A reading
from before a reboot has no knowable age (:data:`~appliance.actions.world.UNKNOWN_AGE`)
and is stale too; a name an action needs that has never been read is listed
as missing. A reading no action needs is never stale.

``GET /world/readings`` gives the same rows as JSON; ``static/world.js``
refreshes the table with it every few seconds while the page is visible.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.actions.world import WorldState
from appliance.config.schema import Action
from appliance.console.app import View
from appliance.console.overview import duration_words
from appliance.console.roles import Access
from appliance.rules.expr import parse_condition

if TYPE_CHECKING:
    from appliance.console.app import Console

FIELDS_CHARS = 300
"""A reading's fields are shown up to this many characters."""


@dataclass(frozen=True)
class Need:
    """How fresh an action needs a reading: the strictest ``fresh_s`` and who asks it."""

    fresh_s: float
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    """One sensor as the page shows it."""

    name: str
    fields: str
    at: str
    age_s: float | None
    age: str
    state: str
    """``fresh``, ``stale``, ``missing`` (needed, never read) or ``""`` (no action needs it)."""
    need: str


def needs(actions: Iterable[Action]) -> dict[str, Need]:
    """For each reading name an action's ``require`` reads: the smallest ``fresh_s``, and who."""
    found: dict[str, Need] = {}
    for action in actions:
        for requirement in action.require:
            for name in parse_condition(requirement.when).names():
                known = found.get(name)
                who = (*known.actions, action.name) if known is not None else (action.name,)
                limit = min(requirement.fresh_s, known.fresh_s) if known else requirement.fresh_s
                found[name] = Need(limit, tuple(dict.fromkeys(who)))
    return found


def rows(world: WorldState, need: dict[str, Need]) -> list[Row]:
    """The page's rows: every reading, then every needed name never read."""
    snapshot = world.snapshot()
    out = []
    for name in sorted(set(snapshot) | set(need)):
        reading, wanted = snapshot.get(name), need.get(name)
        needed = (f"{', '.join(wanted.actions)} (within {duration_words(wanted.fresh_s)})"
                  if wanted is not None else "")
        if reading is None:
            out.append(Row(name, "", "", None, "never", "missing", needed))
            continue
        age = reading["age_s"]
        state = "" if wanted is None else \
            "stale" if age is None or age > wanted.fresh_s else "fresh"
        fields = json.dumps(reading["fields"], ensure_ascii=False, separators=(", ", ": "))
        out.append(Row(name, fields if len(fields) <= FIELDS_CHARS else
                       fields[:FIELDS_CHARS - 1] + "…",
                       time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reading["at"])),
                       age, "unknown (before a reboot)" if age is None else duration_words(age),
                       state, needed))
    return out


class World(View):
    """The World page and its rows."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.world = console.parts.world
        self.need = needs(console.parts.settings.actions)

    def add_routes(self, console: Console) -> None:
        """The page, and its rows as JSON."""
        console.add("GET", "/world", self.page, Access.VIEW)
        console.add("GET", "/world/readings", self.readings, Access.VIEW)

    def rows(self) -> list[Row]:
        """The rows now."""
        return rows(self.world, self.need)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """``GET /world``."""
        return self.console.pages.render(request, "world.html", "World", {"rows": self.rows()})

    async def readings(self, _request: web.Request) -> web.StreamResponse:
        """``GET /world/readings``: ``{"rows": [...]}``."""
        body: dict[str, Any] = {"rows": [asdict(row) for row in self.rows()]}
        return web.json_response(body)

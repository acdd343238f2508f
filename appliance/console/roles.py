"""Who may open what: the access of each route, and the session a request carries.

Every route of the console is registered with an :class:`Access`
(:meth:`appliance.console.Console.add`); a route registered without one does not
exist. The security middleware (:mod:`appliance.console.security`) reads it
before the route runs, and puts the request's :class:`Session` (or ``None``)
under :data:`SESSION`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiohttp import web


class Access(enum.Enum):
    """What a route needs."""

    OPEN = "open"
    """Anyone who passed the Host and Origin checks: the login and first-run pages, assets."""
    VIEW = "view"
    """A login, or nobody when ``api.web.public_status`` is on: Overview, World, Activity."""
    ADMIN = "admin"
    """A login: everything that acts or shows more (talk, manuals, models, logs, settings)."""


@dataclass(frozen=True)
class Session:
    """One logged-in browser."""

    id: str
    csrf: str
    who: str
    """Who acts, for the journal: ``admin@<client address>``."""
    expires: float
    """On :func:`time.monotonic`'s clock."""


SESSION = web.RequestKey("appliance.console.session", Session | None)
"""The request key of the request's :class:`Session` (``None``: not logged in)."""


def session_of(request: web.Request) -> Session | None:
    """The request's session, as the security middleware found it."""
    return request.get(SESSION)

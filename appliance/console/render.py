"""Server-rendered pages: autoescaped Jinja2 templates, and links that work behind proxies.

Every link the console writes is relative (``talk``, ``static/console.js``):
all pages live at the top level of wherever the console is mounted, so the
same HTML works at ``http://device:8080/``, behind Home Assistant's ingress
(``/api/hassio_ingress/<token>/``) and behind any reverse proxy. Only
redirects and the session cookie's path need the mount point, which Home
Assistant's ingress sends as ``X-Ingress-Path``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from appliance import __version__
from appliance.console.roles import Access, session_of

INGRESS_HEADER = "X-Ingress-Path"
_SAFE_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


@dataclass(frozen=True)
class NavItem:
    """One entry of the menu."""

    path: str
    label: str
    access: Access


NAV = (
    NavItem("", "Overview", Access.VIEW),
    NavItem("talk", "Talk", Access.ADMIN),
    NavItem("activity", "Activity", Access.VIEW),
    NavItem("world", "World", Access.VIEW),
    NavItem("manuals", "Manuals", Access.ADMIN),
    NavItem("models", "Models", Access.ADMIN),
    NavItem("health", "Health", Access.ADMIN),
    NavItem("settings", "Settings", Access.ADMIN),
)


def mount_point(request: web.BaseRequest) -> str:
    """Where the console is mounted: ``X-Ingress-Path`` if it is a plain path, else ``""``."""
    prefix = request.headers.get(INGRESS_HEADER, "").strip().rstrip("/")
    return prefix if len(prefix) <= 200 and _SAFE_PREFIX.match(prefix) else ""


def redirect(request: web.BaseRequest, path: str) -> web.HTTPSeeOther:
    """A 303 to one of the console's pages (``path`` without a leading slash)."""
    return web.HTTPSeeOther(f"{mount_point(request)}/{path}")


class Pages:
    """Renders the templates of ``appliance/console/templates``."""

    def __init__(self, device: str, public_status: bool) -> None:
        self.device = device
        self.public_status = public_status
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("appliance.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True)

    def render(self, request: web.Request, template: str, title: str,
               values: Mapping[str, Any] | None = None, status: int = 200) -> web.Response:
        """The page ``template`` with the layout's values (menu, CSRF token, device)."""
        session = session_of(request)
        allowed = {Access.OPEN, Access.VIEW} if session is not None or self.public_status \
            else {Access.OPEN}
        if session is not None:
            allowed.add(Access.ADMIN)
        here = request.path.rsplit("/", 1)[-1]
        html = self.env.get_template(template).render(
            title=title, device=self.device, version=__version__,
            csrf=session.csrf if session is not None else "",
            logged_in=session is not None,
            nav=[item for item in NAV if item.access in allowed], here=here,
            **(values or {}))
        response = web.Response(text=html, content_type="text/html", charset="utf-8",
                                status=status)
        response.enable_compression()
        return response

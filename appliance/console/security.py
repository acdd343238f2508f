"""The console's locks: who is served, with which session, and which posts are the user's own.

Runs after the HTTP server's guard and doors (:mod:`appliance.api.http_checks`
already refused a foreign ``Host`` or ``Origin``), for every request:

1. **No password yet:** only clients on loopback are served, and the first-run
   page (``setup``) only to them. "Loopback" means the TCP peer is a loopback
   address *and* the request names no proxy (``Forwarded``, ``X-Forwarded-For``,
   ``X-Real-IP``, ``X-Ingress-Path``): a reverse proxy on the device would
   otherwise make every client of the network look local.
2. **The session** is found from the cookie :data:`COOKIE` (``HttpOnly``,
   ``SameSite=Strict``, ``Path`` the mount point, ``Secure`` over TLS) and put
   under :data:`~appliance.console.roles.SESSION`.
3. **The route's access** (:meth:`Console.access_of`): ``OPEN`` passes; ``VIEW``
   needs a session or ``api.web.public_status``; ``ADMIN`` a session. Without,
   a page is a 303 to ``login`` and anything else a 401. No route: aiohttp's 404.
4. **Posts** (every method but GET and HEAD) are refused when the browser says
   they come from another site (``Sec-Fetch-Site: cross-site`` or ``same-site``),
   and need ``X-CSRF-Token``: the session's token, or before a session (the login
   and first-run forms) the pre-session token: a random value that the form's
   page sets in the cookie :data:`FORM_COOKIE` and writes into the page
   (double submit). Another site can neither read the page nor set the cookie,
   and cannot send the header without a CORS preflight that nobody grants.
5. **Headers** on every answer that passes here, refusals included: the CSP
   (no inline script, no outside origin), ``nosniff``, ``Referrer-Policy``, and
   ``Cache-Control: no-store`` on everything but the static files.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from appliance.api.http_checks import ip_of
from appliance.api.http_server import Handler
from appliance.console.render import INGRESS_HEADER, mount_point, redirect
from appliance.console.roles import SESSION, Access

if TYPE_CHECKING:
    from appliance.console.app import Console

COOKIE = "appliance_session"
FORM_COOKIE = "appliance_form"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({hdrs.METH_GET, hdrs.METH_HEAD})
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", INGRESS_HEADER)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
NO_PASSWORD = ("the console has no password yet: set one on the device with "
               "`appliance console password` (or open the console on the device itself)")


def is_local(request: web.BaseRequest) -> bool:
    """Whether the client is on this machine, with no proxy in between."""
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    ip = ip_of(request.remote or "")
    return ip is not None and ip.is_loopback


def over_tls(request: web.BaseRequest) -> bool:
    """Whether the browser talks TLS: to us, or to a proxy in front (``X-Forwarded-Proto``).

    Trusting the header costs nothing: a forged ``https`` only makes the
    browser keep the cookie off plain HTTP, which locks out the forger alone.
    """
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(request: web.BaseRequest, response: web.StreamResponse, name: str,
               value: str) -> None:
    """A cookie only this console's pages send back, and no script reads."""
    response.set_cookie(name, value, path=mount_point(request) or "/", httponly=True,
                        samesite="Strict", secure=over_tls(request))


def clear_cookie(request: web.BaseRequest, response: web.StreamResponse, name: str) -> None:
    """Remove a cookie set by :func:`set_cookie`."""
    response.del_cookie(name, path=mount_point(request) or "/", httponly=True,
                        samesite="Strict", secure=over_tls(request))


def form_token(request: web.BaseRequest) -> str:
    """The pre-session token for a login or first-run form: the cookie's, or a new one.

    The form's page writes it into the page and sets it in :data:`FORM_COOKIE`.
    """
    token = request.cookies.get(FORM_COOKIE, "")
    return token if _well_formed(token) else secrets.token_urlsafe(32)


def _well_formed(token: str) -> bool:
    return 32 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()


def _same(given: str, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode(),
                                                                  expected.encode())


def _refusal(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Security:
    """The console's middleware (see the module's description)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.auth = console.auth

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Admit the request or refuse it (the headers are added as any answer is prepared)."""
        await self.auth.refresh()
        if not self.auth.has_password() and not is_local(request):
            return _refusal(403, NO_PASSWORD)
        session = self.auth.session(request.cookies.get(COOKIE))
        request[SESSION] = session
        access = self.console.access_of(request)
        if access is None:
            return await handler(request)  # no such route: the guard's 404 or 405
        if not (access is Access.OPEN or session is not None
                or (access is Access.VIEW and self.console.web.public_status)):
            if request.method in SAFE_METHODS and \
                    "text/html" in request.headers.get(hdrs.ACCEPT, ""):
                raise redirect(request, "login")  # the server's guard answers it
            return _refusal(401, "log in first: this needs the console's password "
                            "(the session may have expired)")
        if request.method not in SAFE_METHODS:
            refused = self._post_refusal(request, access)
            if refused is not None:
                return _refusal(403, refused)
        return await handler(request)

    def _post_refusal(self, request: web.Request, access: Access) -> str | None:
        """Why a state-changing request is not the user's own, or ``None``.

        The session's token, or on an open route (the login and first-run forms)
        the pre-session one.
        """
        if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return "requests from other web sites are refused"
        given = request.headers.get(CSRF_HEADER, "")
        session = request.get(SESSION)
        tokens = [session.csrf] if session is not None else []
        if access is Access.OPEN:
            tokens.append(request.cookies.get(FORM_COOKIE, ""))
        if not any(_same(given, token) for token in tokens):
            return "the form's security token is missing or stale: reload the page and try " \
                "again"
        return None


def add_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The console's security headers (usable as an ``on_response_prepare`` handler's body)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers[hdrs.CACHE_CONTROL] = "no-store"

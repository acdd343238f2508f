"""Logging in and out, and the first-run page that sets the password.

``GET login`` shows the form; ``POST login`` (JSON ``{"password"}``) checks the
password, slowed per client by :class:`~appliance.console.throttle.LoginThrottle`,
and answers with the session cookie and ``{"redirect": "./"}``. ``POST logout``
ends the session. ``setup`` sets the first password, only from the device
itself (:func:`~appliance.console.security.is_local`) and only while none is
set, then logs in. Both forms carry the pre-session CSRF token
(:func:`~appliance.console.security.form_token`; ``static/login.js`` hands it
to console.js). Every outcome is in the journal through
:meth:`Console.audit`, never the password.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.api.errors import ApiError, Problem, bad_request
from appliance.api.http_body import read_json
from appliance.console.app import View
from appliance.console.password import PasswordError
from appliance.console.render import redirect
from appliance.console.roles import SESSION, Access, Session, session_of
from appliance.console.security import (
    COOKIE,
    FORM_COOKIE,
    NO_PASSWORD,
    clear_cookie,
    form_token,
    is_local,
    set_cookie,
)

if TYPE_CHECKING:
    from appliance.console.app import Console

SETUP_LOCAL_ONLY = "the first-run page answers only on the device itself (at localhost)"
ALREADY_SET = "a password is already set: change it with `appliance console password`"


FAILURES_NOTED_EVERY_S = 60.0
"""At most one wrong password a minute is kept in Activity (every one is logged)."""


class Login(View):
    """The login, logout and first-run routes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.auth = console.auth
        self._noted_at = -FAILURES_NOTED_EVERY_S
        self._unnoted = 0

    def add_routes(self, console: Console) -> None:
        """Its routes: all open but logout (a session's)."""
        console.add("GET", "/login", self.page, Access.OPEN)
        console.add("POST", "/login", self.login, Access.OPEN)
        console.add("POST", "/logout", self.logout, Access.ADMIN)
        console.add("GET", "/setup", self.setup_page, Access.OPEN)
        console.add("POST", "/setup", self.setup, Access.OPEN)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The login form (or where to go instead)."""
        if session_of(request) is not None:
            raise redirect(request, "")
        if not self.auth.has_password():
            raise redirect(request, "setup")  # only loopback gets this far
        return self._form(request, "login.html", "Log in")

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Check the password; a session on success."""
        if not self.auth.has_password():
            raise ApiError(Problem.FORBIDDEN, NO_PASSWORD)
        password = _text(await read_json(request), "password")
        client = request.remote
        wait_s = self.auth.throttle.begin(client)
        if wait_s > 0:
            retry = math.ceil(wait_s)
            raise ApiError(Problem.RATE_LIMITED, f"too many wrong passwords: try again in "
                           f"{retry} s", retry_after_s=retry)
        ok = False
        try:
            ok = await self.auth.verify(password)
        finally:
            self.auth.throttle.end(client, ok)
        if not ok:
            self._failed(request)
            raise ApiError(Problem.UNAUTHORIZED, "wrong password")
        return self._logged_in(request, "login")

    def _failed(self, request: web.Request) -> None:
        """Log every wrong password; keep one in Activity a minute, with how many it stands for.

        Activity keeps a bounded number of rows: guesses from many addresses must not
        push the device's real history out of it.
        """
        self._unnoted += 1
        now = time.monotonic()
        noted = now - self._noted_at >= FAILURES_NOTED_EVERY_S
        self.console.audit(request, "login_failed", f"{self._unnoted} since the last noted"
                           if noted and self._unnoted > 1 else "", journal=noted)
        if noted:
            self._noted_at, self._unnoted = now, 0

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """End the session."""
        session = session_of(request)
        assert session is not None  # an ADMIN route: the middleware saw to it
        self.console.audit(request, "logout")
        self.auth.logout(session.id)
        response = web.json_response({"redirect": "login"})
        clear_cookie(request, response, COOKIE)
        return response

    async def setup_page(self, request: web.Request) -> web.StreamResponse:
        """The first-run form: on the device itself, while no password is set."""
        if self.auth.has_password():
            raise redirect(request, "login")
        if not is_local(request):
            raise ApiError(Problem.FORBIDDEN, SETUP_LOCAL_ONLY)
        return self._form(request, "setup.html", "Set the console's password")

    async def setup(self, request: web.Request) -> web.StreamResponse:
        """Set the first password (``{"password", "confirm"}``) and log in."""
        if not is_local(request):
            raise ApiError(Problem.FORBIDDEN, SETUP_LOCAL_ONLY)
        body = await read_json(request)
        password, confirm = _text(body, "password"), _text(body, "confirm")
        if password != confirm:
            raise bad_request("the two passwords differ", param="confirm")
        try:
            if not await self.auth.first_password(password):
                raise ApiError(Problem.FORBIDDEN, ALREADY_SET)
        except PasswordError as exc:
            raise bad_request(str(exc), param="password") from None
        return self._logged_in(request, "password_set", "first-run page")

    def _form(self, request: web.Request, template: str, title: str) -> web.Response:
        token = form_token(request)
        response = self.console.pages.render(request, template, title, {"form_token": token})
        set_cookie(request, response, FORM_COOKIE, token)
        return response

    def _logged_in(self, request: web.Request, action: str, detail: str = "") -> web.Response:
        session: Session = self.auth.login(request.remote)
        request[SESSION] = session  # the journal names who acted: this session
        self.console.audit(request, action, detail)
        response = web.json_response({"redirect": "./"})
        set_cookie(request, response, COOKIE, session.id)
        clear_cookie(request, response, FORM_COOKIE)
        return response


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise bad_request(f"{key} must be a string", param=key)
    return value

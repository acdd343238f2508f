"""The HTTP server: aiohttp on the supervisor's loop, for the APIs and for the console.

Every request passes three middlewares, in this order:

1. the guard answers every failure in the shape of the API that was asked
   (OpenAI's under ``/v1/``, Ollama's everywhere else) with the right status
   code; an unexpected exception is logged with its traceback and answered
   with ``internal error``;
2. the doors (:mod:`~appliance.api.http_checks`) refuse a foreign ``Host``
   or ``Origin`` and, on the APIs' server, a POST body that is not JSON;
3. when ``api.http.token_file`` is set, every route needs
   ``Authorization: Bearer <token>`` (compared in constant time);
4. the server's own (the console's sessions, :mod:`appliance.console.security`).

Only then does a route read its body (:mod:`~appliance.api.http_body`):
nothing is inflated or parsed for a request that is refused. Connections
are capped and time out (:mod:`~appliance.api.http_connections`). A client
that disconnects cancels its generation: aiohttp cancels the handler
(``handler_cancellation``) and the handler cancels the request.
"""

from __future__ import annotations

import functools
import hmac
import resource
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web

from appliance.api.errors import ApiError, Problem
from appliance.api.http_body import BODY_TIMEOUT_S, MAX_BODY_BYTES
from appliance.api.http_checks import PREFLIGHT_HEADERS, Doors, add_cors
from appliance.api.http_connections import Connection, GuardedSite, Pool
from appliance.api.http_errors import api_of, error_response
from appliance.api.metrics import Metrics
from appliance.config import Settings
from appliance.config.addresses import parse_listen
from appliance.config.schema_api import HttpSettings
from appliance.errors import ConfigError
from appliance.logs import get_logger
from appliance.service.guard import INTERNAL_ERROR, guarded

log = get_logger("http_api")

SHUTDOWN_S = 1.0
"""At shutdown, open requests get this long before their handlers are cancelled."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
OnPrepare = Callable[[web.BaseRequest, web.StreamResponse], Awaitable[None]]


class HttpApi:
    """One aiohttp server on the supervisor's loop: the APIs' or the console's routes.

    ``routes`` adds the routes to the application; ``middlewares`` run after the
    guard and the doors (the console's sessions); ``on_prepare`` see every answer
    before its headers go (the console's security headers); ``token`` is the APIs'
    bearer token; ``key`` names the config section in errors. ``json_only``: a POST body
    must be JSON (the APIs); the console checks its own bodies.
    """

    def __init__(self, settings: Settings, http: HttpSettings, metrics: Metrics,
                 routes: Callable[[web.Application], None], *, key: str = "api.http",
                 token: str | None = None, middlewares: Sequence[Middleware] = (),
                 on_prepare: Sequence[OnPrepare] = (), json_only: bool = True) -> None:
        self.settings = settings
        self.http = http
        self.metrics = metrics
        self.routes = routes
        self.key = key
        self.extra_middlewares = tuple(middlewares)
        self.on_prepare = tuple(on_prepare)
        try:
            self.host, self.port = parse_listen(http.listen)
        except ValueError as exc:
            raise self._config_error(f"{key}.listen", str(exc)) from None
        for origin in http.allowed_origins:
            if not origin.startswith(("http://", "https://")):
                raise self._config_error(f"{key}.allowed_origins", "expected origins such "
                                         f"as http://webui.lan:8080, got {origin!r}")
        self.doors = Doors(self.host, http.allowed_hosts, http.allowed_origins,
                           json_only=json_only)
        self.token = token
        self.pool = Pool(_connection_limit(http.max_connections), http)
        self._runner: web.AppRunner | None = None
        self._site: GuardedSite | None = None

    def _config_error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.settings.source,
                           line=self.settings.line_of(key), key=key)

    def app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[self._guard, self._doors, self._auth,
                                           *self.extra_middlewares],
                              client_max_size=MAX_BODY_BYTES)
        app[BODY_TIMEOUT_S] = self.http.body_timeout_s
        app.on_response_prepare.append(functools.partial(add_cors, self.doors))
        app.on_response_prepare.extend(self.on_prepare)
        self.routes(app)
        return app

    async def start(self, host: str | None = None) -> None:
        """Listen (on ``host`` instead of the listen address's, if given).

        A port that cannot be bound is a one-line config error.
        """
        self._runner = runner = web.AppRunner(self.app(), handler_cancellation=True,
                                              shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        try:
            await self._listen(host or self.host)
        except OSError as exc:
            await runner.cleanup()
            raise self._config_error(f"{self.key}.listen", f"cannot listen on "
                                     f"{self.http.listen}: {exc.strerror or exc}") from None

    async def _listen(self, host: str) -> None:
        runner = self._runner
        assert runner is not None
        self._site = GuardedSite(runner, host, self.port, self.pool)
        await self._site.start()
        if self.port == 0 and runner.addresses:
            self.port = runner.addresses[0][1]
        log.info("http_api_listening", section=self.key, host=host, port=self.port,
                 token=self.token is not None, max_connections=self.pool.limit)

    async def rebind(self, host: str) -> None:
        """Listen on ``host`` (same port) instead: open connections stay, new ones go there."""
        if self._site is not None:
            await self._site.stop()
        await self._listen(host)

    async def close(self) -> None:
        """Stop listening and end open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.pool.refusals.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, Connection):
            connection.request_started()
        try:
            response = await _answer(request, handler)
        finally:
            if isinstance(connection, Connection):
                connection.request_ended()
        self.metrics.requests.labels(api_of(request.path), str(response.status)).inc()
        return response

    @web.middleware
    async def _doors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.doors.check(request)
        if request.method == hdrs.METH_OPTIONS and self.doors.cross_origin(request):
            return web.Response(status=204, headers=PREFLIGHT_HEADERS)
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self.token.encode()):
                problem = "the bearer token is wrong" if given else "a bearer token is needed"
                raise ApiError(Problem.UNAUTHORIZED, f"{problem} (Authorization: Bearer <token>)")
        return await handler(request)


def _connection_limit(configured: int) -> int:
    """``configured``, or half the descriptor limit if lower: the rest is the device's own."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured <= soft // 2:
        return configured
    log.warning("http_connections_capped", configured=configured, limit=soft // 2,
                nofile=soft, fix="raise LimitNOFILE in the unit or lower "
                "api.http.max_connections")
    return max(soft // 2, 1)


async def _internal_error(request: web.Request, _handler: Handler) -> web.StreamResponse:
    """The guard's answer to a bug: ``internal error`` in the shape of the API asked."""
    return error_response(api_of(request.path), ApiError(Problem.INTERNAL, INTERNAL_ERROR))


def _path(request: web.Request, _handler: Handler) -> dict[str, object]:
    return {"path": request.path}


@guarded(_internal_error, event="http_handler_failed", context=_path)
async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The route's response, or its refusal in the shape of the API that was asked."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(api_of(request.path), exc)
        if exc.problem is Problem.TIMEOUT:
            response.force_close()  # the rest of that body is not worth waiting for
        return response
    except web.HTTPRedirection as exc:  # a redirect is an answer, not a failure
        return web.Response(status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        return error_response(api_of(request.path), _http_error(request, exc))


def _http_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    """Refusals by aiohttp itself (no such route, wrong method, body too large) as ours."""
    if exc.status == 405:
        return ApiError(Problem.METHOD, f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return ApiError(Problem.BAD_REQUEST,
                        f"the request body is over {MAX_BODY_BYTES >> 20} MiB")
    if exc.status == 404:
        return ApiError(Problem.NOT_FOUND, f"no such endpoint: {request.path}")
    return ApiError(Problem.BAD_REQUEST, exc.reason)

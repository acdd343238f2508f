"""The HTTP server: aiohttp on the supervisor's loop, with the Ollama and OpenAI routes.

One guard (a middleware) answers every failure in the shape of the API that
was asked, OpenAI's under ``/v1/`` and Ollama's everywhere else, with the
right status code; an unexpected exception is logged with its traceback and
answered with ``internal error``. When ``api.http.token_file`` is set, every
route needs ``Authorization: Bearer <token>``. A client that disconnects
cancels its generation: aiohttp cancels the handler (``handler_cancellation``)
and the handler cancels the request.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from appliance.api import ollama_routes, openai_routes
from appliance.api.context import Context
from appliance.api.errors import ApiError, Problem
from appliance.api.metrics import CONTENT_TYPE, Metrics
from appliance.config import Settings
from appliance.config.addresses import parse_listen
from appliance.config.schema import HttpSettings
from appliance.config.secrets import read_api_token
from appliance.errors import ConfigError
from appliance.logs import get_logger
from appliance.service.guard import INTERNAL_ERROR

log = get_logger("http_api")

MAX_BODY_BYTES = 4 << 20
SHUTDOWN_S = 1.0
"""At shutdown, open requests get this long before their handlers are cancelled."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpApi:
    """The Ollama- and OpenAI-compatible HTTP server."""

    def __init__(self, settings: Settings, http: HttpSettings, context: Context,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.http = http
        self.metrics = metrics
        self.context = context
        key = "api.http.listen"
        try:
            self.host, self.port = parse_listen(http.listen)
        except ValueError as exc:
            raise ConfigError(str(exc), file=settings.source, line=settings.line_of(key),
                              key=key) from None
        self.token = read_api_token(settings)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[self._guard, self._auth],
                              client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/metrics", self._metrics)
        ollama_routes.add_routes(app, self.context)
        openai_routes.add_routes(app, self.context)
        return app

    async def start(self) -> None:
        """Listen; a port that cannot be bound is a one-line config error."""
        self._runner = runner = web.AppRunner(self.app(), handler_cancellation=True,
                                              access_log=None, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            key = "api.http.listen"
            raise ConfigError(f"cannot listen on {self.http.listen}: {exc.strerror or exc}",
                              file=self.settings.source, line=self.settings.line_of(key),
                              key=key) from None
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("http_api_listening", host=self.host, port=self.port,
                 token=self.token is not None)

    async def close(self) -> None:
        """Stop listening and end open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        api = "openai" if request.path.startswith("/v1/") else "ollama"
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(api, exc)
        except web.HTTPException as exc:
            response = error_response(api, _http_error(request, exc))
        except Exception:
            log.exception("http_handler_failed", path=request.path)
            response = error_response(api, ApiError(Problem.INTERNAL, INTERNAL_ERROR))
        self.metrics.requests.labels(api, str(response.status)).inc()
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), self.token.encode()):
                problem = "the bearer token is wrong" if given else "a bearer token is needed"
                raise ApiError(Problem.UNAUTHORIZED, f"{problem} (Authorization: Bearer <token>)")
        return await handler(request)


def error_response(api: str, error: ApiError) -> web.Response:
    """``error`` in ``api``'s own error shape and status code."""
    body = openai_routes.error_body(error) if api == "openai" else ollama_routes.error_body(
        error)
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if error.problem is Problem.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(body, status=error.problem.status, headers=headers)


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

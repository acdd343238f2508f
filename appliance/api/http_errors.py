"""An :class:`ApiError` as an HTTP response, in the shape of the API that was asked.

OpenAI's routes live under ``/v1/``, Ollama's everywhere else; both the
routes' guard and the connection (for requests aiohttp could not even parse)
answer through :func:`error_response`, so every refusal has one shape per API.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from appliance.api import ollama_routes, openai_routes
from appliance.api.errors import ApiError, Problem

Api = Literal["ollama", "openai"]


def api_of(path: str) -> Api:
    """Which API a request path belongs to."""
    return "openai" if path.startswith("/v1/") else "ollama"


def error_response(api: Api, error: ApiError) -> web.Response:
    """``error`` in ``api``'s own error shape and status code."""
    body = openai_routes.error_body(error) if api == "openai" else ollama_routes.error_body(
        error)
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if error.problem is Problem.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(body, status=error.problem.status, headers=headers)

"""Why an API request was refused, independent of which API's shape says it.

Each API turns an :class:`ApiError` into its own error body (Ollama's
``{"error": "..."}``, OpenAI's ``{"error": {"message", "type", "code"}}``,
Wyoming's ``not-handled``) with the status code of its :class:`Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from appliance.errors import ApplianceError


@dataclass(frozen=True)
class _Kind:
    status: int
    openai_type: str
    code: str


class Problem(Enum):
    """What went wrong, with its HTTP status and OpenAI's error type and code."""

    BAD_REQUEST = _Kind(400, "invalid_request_error", "invalid_request")
    UNAUTHORIZED = _Kind(401, "authentication_error", "invalid_api_key")
    FORBIDDEN = _Kind(403, "permission_error", "forbidden")
    NOT_FOUND = _Kind(404, "invalid_request_error", "not_found")
    UNKNOWN_MODEL = _Kind(404, "invalid_request_error", "model_not_found")
    METHOD = _Kind(405, "invalid_request_error", "method_not_allowed")
    TIMEOUT = _Kind(408, "invalid_request_error", "request_timeout")
    CONFLICT = _Kind(409, "invalid_request_error", "conflict")
    TOO_LARGE = _Kind(413, "invalid_request_error", "request_too_large")
    MEDIA_TYPE = _Kind(415, "invalid_request_error", "unsupported_media_type")
    CONTEXT_TOO_LONG = _Kind(400, "invalid_request_error", "context_length_exceeded")
    RATE_LIMITED = _Kind(429, "rate_limit_error", "rate_limit_exceeded")
    QUEUE_FULL = _Kind(503, "server_error", "queue_full")
    BUSY = _Kind(503, "server_error", "too_many_connections")
    COOLING_DOWN = _Kind(503, "server_error", "cooling_down")
    UNAVAILABLE = _Kind(503, "server_error", "unavailable")
    INTERNAL = _Kind(500, "server_error", "internal_error")

    @property
    def status(self) -> int:
        """The HTTP status code."""
        return self.value.status


class ApiError(ApplianceError):
    """A request that gets an error answer; ``str()`` is the public one-line message.

    ``param`` names the offending field (OpenAI reports it); ``retry_after_s``
    becomes a ``Retry-After`` header.
    """

    def __init__(self, problem: Problem, message: str, *, param: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.problem = problem
        self.param = param
        self.retry_after_s = retry_after_s


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A malformed request: ``message`` names the field and what is wrong with it."""
    return ApiError(Problem.BAD_REQUEST, message, param=param)

"""The appliance's own exceptions.

Every error a user can cause or fix is one of these, and its message says what
is wrong and what to do about it. The CLI prints ``str(error)`` on one line and
exits with :attr:`ApplianceError.exit_code`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a request got no answer, as every part and API names it.

    The code travels with the message (across the worker pipe too), so that each
    API maps it to its own status and error shape; nothing reads the message to
    learn the kind.
    """

    CONTEXT_TOO_LONG = "context_too_long"
    WORKER_RESTARTING = "worker_restarting"
    QUEUE_FULL = "queue_full"
    RATE_LIMITED = "rate_limited"
    COOLING_DOWN = "cooling_down"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class ApplianceError(Exception):
    """Base of every error the appliance reports to a person.

    ``code`` says what kind of failure it is for a request that it ends.
    """

    exit_code = 1
    code = ErrorCode.INTERNAL


class UsageError(ApplianceError):
    """A command-line argument is wrong."""

    exit_code = 2


class ConfigError(ApplianceError):
    """A configuration value is wrong; names the file, line and key path."""

    exit_code = 2

    def __init__(self, problem: str, *, file: str = "<config>", line: int = 0,
                 key: str = "") -> None:
        self.file, self.line, self.key, self.problem = file, line, key, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class CatalogError(ApplianceError):
    """The model catalog is unreadable or does not know a model."""


class DownloadError(ApplianceError):
    """A model download failed or its file does not match the catalog's sha256."""


class TrustError(ApplianceError):
    """A site catalog or one of its files was refused: unsigned, badly signed, stale, altered.

    The message names the TUF role (root, timestamp, snapshot, targets) or the
    target, and the reason, in one line (see :mod:`appliance.trust`).
    """


class ModelError(ApplianceError):
    """A model cannot be loaded or used."""


class PromptTooLong(ModelError):
    """A prompt does not fit the model's context (``llm.n_ctx``)."""

    code = ErrorCode.CONTEXT_TOO_LONG


class ResourceError(ModelError):
    """The machine lacks the memory to load a model with the requested settings."""

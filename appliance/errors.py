"""The appliance's own exceptions.

Every error a user can cause or fix is one of these, and its message says what
is wrong and what to do about it. The CLI prints ``str(error)`` on one line and
exits with :attr:`ApplianceError.exit_code`.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance reports to a person."""

    exit_code = 1


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


class ModelError(ApplianceError):
    """A model cannot be loaded or used."""


class ResourceError(ModelError):
    """The machine lacks the memory to load a model with the requested settings."""

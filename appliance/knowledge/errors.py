"""The knowledge package's one error type."""

from __future__ import annotations

from appliance.errors import ApplianceError


class KnowledgeError(ApplianceError):
    """A manual cannot be indexed or the index cannot be used; the message names the file."""

"""The field metadata that the settings' dataclasses share (see :mod:`appliance.config.schema`)."""

from __future__ import annotations

from typing import Any


def bounds(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """Field metadata: the inclusive range a number must lie in."""
    return {"low": low, "high": high}


EXISTING: dict[str, Any] = {"exists": True}
"""Field metadata: the path must name an existing file or directory."""

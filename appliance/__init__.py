"""appliance: the firmware service that turns a Raspberry Pi 5 into an offline AI appliance."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata when first asked for."""
    if name != "__version__":
        raise AttributeError(f"module 'appliance' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("appliance")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found

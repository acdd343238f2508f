"""appliance: the firmware service that turns a Raspberry Pi 5 into an offline AI appliance."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

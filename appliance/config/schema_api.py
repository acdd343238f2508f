"""The ``api`` section: the standard APIs and the device's own console.

Split from :mod:`appliance.config.schema` (which imports it) to keep each
module to one concern; the conventions (:func:`bounds`, :data:`EXISTING`) are
that module's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from appliance.config.schema_base import EXISTING, bounds


@dataclass(frozen=True)
class WyomingSettings:
    """The Wyoming server (Home Assistant's Wyoming integration)."""

    listen: str = "tcp://0.0.0.0:10700"
    zeroconf: bool = True
    name: str | None = None
    actions: bool = False  # may a transcript act? Wyoming has no authentication
    # Addresses or CIDR networks that may connect (the protocol has no authentication).
    allowed_clients: tuple[str, ...] = ("127.0.0.0/8", "::1", "10.0.0.0/8", "172.16.0.0/12",
                                        "192.168.0.0/16", "169.254.0.0/16", "fc00::/7",
                                        "fe80::/10")
    max_connections: int = field(default=64, metadata=bounds(1, 4096))
    idle_timeout_s: float = field(default=30.0, metadata=bounds(0.1, 3600.0))
    event_timeout_s: float = field(default=10.0, metadata=bounds(0.1, 600.0))


@dataclass(frozen=True)
class HttpSettings:
    """The Ollama- and OpenAI-compatible HTTP API."""

    listen: str = "127.0.0.1:11434"
    token_file: Path | None = field(default=None, metadata=EXISTING)
    # Host names besides the listen address, loopback and this machine's own name (a proxy's).
    allowed_hosts: tuple[str, ...] = ()
    # Browser origins (http://host:port) that may call the API besides its own.
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = field(default=128, metadata=bounds(1, 65536))
    header_timeout_s: float = field(default=10.0, metadata=bounds(0.1, 300.0))
    idle_timeout_s: float = field(default=15.0, metadata=bounds(0.1, 3600.0))
    body_timeout_s: float = field(default=30.0, metadata=bounds(0.1, 600.0))
    actions: Literal["auto", True, False] = "auto"  # may a chat act? auto: with a token


@dataclass(frozen=True)
class WebSettings:
    """The console: the device's own pages (docs/console.md).

    Until a password is set (``appliance console password``, or the first-run page
    from loopback) only loopback clients are served, whatever ``listen`` says.
    """

    listen: str = "0.0.0.0:8080"
    password_file: Path | None = None  # null: <data_dir>/console/password
    public_status: bool = False  # Overview, World and Activity without a login
    session_hours: float = field(default=12.0, metadata=bounds(0.05, 720.0))
    max_upload_mb: float = field(default=20.0, metadata=bounds(0.001, 1000.0))
    # Host names besides the listen address, loopback and this machine's own name (a proxy's).
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiSettings:
    """Standard APIs; each is off while null."""

    wyoming: WyomingSettings | None = None
    http: HttpSettings | None = None
    web: WebSettings | None = None

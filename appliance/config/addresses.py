"""Listen addresses in the config: ``host:port`` for HTTP, ``tcp://host:port`` for Wyoming."""

from __future__ import annotations


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a host and a port; ``ValueError`` if malformed."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:11434, got {listen!r}")
    return host, int(port)


def check_uri(uri: str) -> None:
    """A Wyoming server URI: ``tcp://HOST:PORT`` or ``unix://PATH``; ``ValueError`` if not."""
    if uri.startswith("tcp://"):
        parse_listen(uri.removeprefix("tcp://"))
    elif not uri.startswith("unix://") or uri == "unix://":
        raise ValueError(f"expected tcp://HOST:PORT or unix://PATH, got {uri!r}")

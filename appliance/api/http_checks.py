"""Which requests may reach the routes: checks against DNS rebinding and cross-site requests.

A web page the user visits can send requests to the appliance (it is on the
same network) in two ways, and these checks, after Ollama's, refuse both:

* **DNS rebinding.** The page's own host name is made to resolve to the
  appliance, so the browser treats the appliance as the page's origin and
  lets it read the answers. Its requests carry that foreign name in
  ``Host``. So ``Host`` must be the listen address, the address the client
  connected to, a loopback name (``localhost``, ``127.x``, ``::1``), this
  machine's hostname or ``<hostname>.local``, or one of
  ``api.http.allowed_hosts``; anything else is a 403.
* **Cross-site requests.** A page of another origin may send a "simple"
  POST (``text/plain``, a form) without asking first. Browsers send
  ``Origin`` with every POST and every cross-origin request, so an
  ``Origin`` other than the server's own (a console page served by it) or
  one of ``api.http.allowed_origins`` is a 403; and a POST whose
  ``Content-Type`` is not JSON is a 415, whoever sent it. Pages of an
  allowed origin get CORS headers, and their preflight (``OPTIONS``) a 204.

Clients that are not browsers (Home Assistant, Open WebUI's backend, the
Ollama and OpenAI libraries, curl with ``-H 'Content-Type: application/json'``)
send no ``Origin`` and pass.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp import hdrs, web

from appliance.api.errors import ApiError, Problem

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


class Doors:
    """The Host, Origin and Content-Type checks of one server."""

    def __init__(self, listen_host: str, allowed_hosts: Iterable[str],
                 allowed_origins: Iterable[str], *, json_only: bool = True) -> None:
        own = socket.gethostname().lower()
        self.names = {"localhost", own, f"{own}.local",
                      *(h.strip().lower().rstrip(".") for h in allowed_hosts)}
        self.listen = ip_of(listen_host)
        self.origins = {o.strip().lower().rstrip("/") for o in allowed_origins}
        self.json_only = json_only

    def check(self, request: web.Request) -> None:
        """Raise the :class:`ApiError` for a request that must not reach a route."""
        host = request.headers.get(hdrs.HOST)
        if host is not None and not self._host_allowed(host, request):
            raise ApiError(Problem.FORBIDDEN, "this server does not serve that Host (DNS "
                           "rebinding?); add the name to api.http.allowed_hosts if it is yours")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self._origin_allowed(origin, host):
            raise ApiError(Problem.FORBIDDEN, "requests from other web pages are refused; add "
                           "the page's origin to api.http.allowed_origins to allow them")
        if self.json_only and request.method == hdrs.METH_POST and \
                hdrs.CONTENT_TYPE in request.headers:
            kind = request.content_type
            if kind != "application/json" and not (
                    kind.startswith("application/") and kind.endswith("+json")):
                raise ApiError(Problem.MEDIA_TYPE, "the request body must be JSON: send "
                               f"Content-Type: application/json (not {kind[:60]!r})")

    def cross_origin(self, request: web.BaseRequest) -> str | None:
        """The request's ``Origin`` when it is one of the allowed other origins."""
        origin = request.headers.get(hdrs.ORIGIN, "").strip().lower().rstrip("/")
        return origin if origin in self.origins else None

    def _host_allowed(self, host: str, request: web.Request) -> bool:
        name = _name(host)
        if name in self.names:  # an address may be listed too (a proxy's, by its IP)
            return True
        ip = ip_of(name)
        if ip is None:
            return name.endswith(".localhost")
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        reached = ip_of(str(sockname[0])) if sockname else None
        return ip.is_loopback or (ip == self.listen and not ip.is_unspecified) or ip == reached

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower().rstrip("/")
        own = (f"http://{host.lower()}", f"https://{host.lower()}") if host else ()
        return origin in self.origins or origin in own


async def add_cors(doors: Doors, request: web.BaseRequest, response: web.StreamResponse,
                   ) -> None:
    """CORS headers on every answer to an allowed other origin (before headers are sent)."""
    origin = doors.cross_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")


def _name(host: str) -> str:
    """A ``Host`` header's name: without its port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return (name if name and port.isdigit() else host).rstrip(".")


def ip_of(name: str) -> IpAddress | None:
    """An address as text (a zone, IPv4 mapped in IPv6) as its IP; ``None`` for a name."""
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip

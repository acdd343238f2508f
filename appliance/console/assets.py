"""The console's static files: served from the package, each listed with its licence and sha256.

Everything a page loads (scripts, styles, icons) ships inside the package and
is listed in ``static/ASSETS.json`` with where it comes from, its version, its
licence and its sha256; nothing is fetched from the internet, so the pages
work on a device that has none. A file that is not listed is not served.
After changing a file, ``python -m appliance.console.assets --write`` records
its new digest (``tests/test_console_assets.py`` fails until then).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aiohttp import web

MANIFEST = "ASSETS.json"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2"}


@dataclass(frozen=True)
class Asset:
    """One static file as the manifest lists it."""

    name: str
    source: str
    version: str
    licence: str
    sha256: str


def static_dir() -> Path:
    """The package's ``static`` directory."""
    return Path(str(resources.files("appliance.console") / "static"))


def manifest(directory: Path | None = None) -> dict[str, Asset]:
    """The assets listed in ``ASSETS.json``, by file name."""
    directory = directory or static_dir()
    listed = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    return {entry["name"]: Asset(**entry) for entry in listed}


def digest(path: Path) -> str:
    """The sha256 of a file, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class StaticFiles:
    """Serves the listed assets, compressed when the browser takes it, cached by digest."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or static_dir()
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for name, asset in manifest(self.directory).items():
            body = (self.directory / name).read_bytes()
            kind = _TYPES.get(Path(name).suffix, "application/octet-stream")
            self.files[name] = (body, kind, asset.sha256[:16])

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """``GET static/{name}``: the file, or 404 if it is not listed."""
        found = self.files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file")
        body, kind, etag = found
        if request.headers.get("If-None-Match") == f'"{etag}"':
            return web.Response(status=304, headers={"ETag": f'"{etag}"'})
        response = web.Response(body=body, content_type=kind, headers={
            "ETag": f'"{etag}"', "Cache-Control": "no-cache"})
        response.enable_compression()
        return response


def _write(directory: Path) -> None:
    """Record the current digest of every listed file."""
    path = directory / MANIFEST
    listed = json.loads(path.read_text(encoding="utf-8"))
    for entry in listed:
        entry["sha256"] = digest(directory / entry["name"])
    path.write_text(json.dumps(listed, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    """``python -m appliance.console.assets [--write]``: check (or record) the digests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the current digests")
    args = parser.parse_args()
    directory = static_dir()
    if args.write:
        _write(directory)
    for name, asset in manifest(directory).items():
        state = "ok" if digest(directory / name) == asset.sha256 else "CHANGED"
        print(f"{state:8} {name}  {asset.source} {asset.version} ({asset.licence})")


if __name__ == "__main__":
    main()

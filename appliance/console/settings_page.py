"""The Settings page: the effective configuration, as ``appliance config check`` prints it.

Read-only. Secrets are never in the settings (only where to find them: a
``*_file`` path or a ``*_env`` name, which are shown; the files' contents are
not read here); still, a value under a key named like a secret, a
:class:`~appliance.config.schema.Secret`, the password in a URL's user part,
and any text that holds a registered secret (:func:`appliance.logs.redact`)
are shown as ``[redacted]``.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from appliance.cli.config_cmd import plain
from appliance.config.schema import Secret
from appliance.console.app import View
from appliance.console.roles import Access
from appliance.logs import REDACTED, redact

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.console.app import Console

_SECRET_KEY = re.compile(r"(password|passphrase|token|api_key|secret|private_key)$", re.I)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


def shown(value: Any, key: str = "") -> Any:
    """``value`` (plain data, under ``key``) with every secret replaced by ``[redacted]``."""
    if isinstance(value, Secret) or (_SECRET_KEY.search(key) and value not in (None, "")):
        return REDACTED
    if isinstance(value, dict):
        return {k: shown(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v, key) for v in value]
    if isinstance(value, str):
        return redact(_URL_PASSWORD.sub(rf"\1{REDACTED}@", value))
    return value


def sections(settings: Settings) -> list[tuple[str, str]]:
    """``(section, YAML)`` for each top-level key of the effective configuration."""
    data = shown(plain(settings))
    return [(name, yaml.safe_dump({name: body}, sort_keys=False, allow_unicode=True))
            for name, body in data.items()]


class SettingsPage(View):
    """The page; nothing to change from here."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def add_routes(self, console: Console) -> None:
        """``/settings``."""
        console.add("GET", "/settings", self.page, Access.ADMIN)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The configuration, one card per section."""
        parts = self.console.parts
        return self.console.pages.render(request, "settings.html", "Settings", {
            "source": parts.settings.source,
            "sections": await asyncio.to_thread(sections, parts.settings)})

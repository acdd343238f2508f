"""The Models page: the catalog, what is installed and verified, and a pull with its progress.

The list is :func:`appliance.catalog.catalog_for` with each model's state as
``appliance models list`` shows it (missing, installed, verified), read on a
thread. A pull runs in the server (:class:`~appliance.console.pull.Puller`),
one at a time; ``GET models/pull`` is its progress (bytes, rate, time left),
which the page polls, so a page opened again finds the running pull.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.api.errors import ApiError, Problem
from appliance.api.http_body import read_json
from appliance.catalog import catalog_for
from appliance.console.app import View
from appliance.console.pull import Puller
from appliance.console.roles import Access
from appliance.errors import CatalogError
from appliance.model_pull import model_state

if TYPE_CHECKING:
    from appliance.console.app import Console


class ModelsPage(View):
    """The page, its routes and the server's pull."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.settings = console.parts.settings
        self.puller = Puller(self.settings)

    def add_routes(self, console: Console) -> None:
        """``/models``, ``/models/pull`` (GET: progress, POST: start), ``/models/pull/cancel``."""
        console.add("GET", "/models", self.page, Access.ADMIN)
        console.add("GET", "/models/pull", self.progress, Access.ADMIN)
        console.add("POST", "/models/pull", self.pull, Access.ADMIN)
        console.add("POST", "/models/pull/cancel", self.cancel, Access.ADMIN)

    async def close(self) -> None:
        """Cancel a running pull (its partial file stays for the next one)."""
        await self.puller.close()

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The catalog table and the pull's progress."""
        try:
            models, problem = await asyncio.to_thread(self._models), ""
        except CatalogError as exc:
            models, problem = [], f"appliance: {exc}"
        current = self.puller.current
        return self.console.pages.render(request, "models.html", "Models", {
            "models": models, "problem": problem, "in_use": self.settings.llm.model,
            "pull": current.state.to_json() if current is not None else None})

    def _models(self) -> list[dict[str, Any]]:
        """Each catalog entry with its state on this device."""
        rows = []
        for entry in catalog_for(self.settings).values():
            state, _path = model_state(entry, self.settings.models_dir)
            rows.append({"name": entry.name, "kind": entry.kind, "license": entry.license,
                         "size_mb": round(entry.size / 1e6) if entry.size else None,
                         "state": "packaged" if entry.package and state != "missing" else state,
                         "pullable": entry.package is None and entry.sha256 is not None,
                         "notes": entry.notes})
        return rows

    async def progress(self, _request: web.Request) -> web.StreamResponse:
        """The running (or last) pull, ``{"pull": null}`` before the first.

        ``{"pull": {name, state, file, done, total, rate, left_s, line}}``.
        """
        current = self.puller.current
        return web.json_response({"pull": current.state.to_json() if current else None})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        """``POST models/pull {"name"}``: start pulling it in the server."""
        name = str((await read_json(request)).get("name", "")).strip()
        if not name or len(name) > 200:
            raise ApiError(Problem.BAD_REQUEST, "name the model to pull, as the catalog does")
        if self.puller.running:
            assert self.puller.current is not None
            raise ApiError(Problem.CONFLICT, f"a pull of {self.puller.current.state.name} "
                           "is running; cancel it or wait for it to end")
        pull = self.puller.start(name)
        self.console.audit(request, "model_pull", name)
        return web.json_response({"pull": pull.state.to_json()})

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        """``POST models/pull/cancel``: stop the running pull at its next block."""
        if not self.puller.cancel():
            raise ApiError(Problem.BAD_REQUEST, "no pull is running")
        assert self.puller.current is not None
        self.console.audit(request, "model_pull_cancel", self.puller.current.state.name)
        return web.json_response({"pull": self.puller.current.state.to_json()})

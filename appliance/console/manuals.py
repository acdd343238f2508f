"""The Manuals page: upload, list, remove and search the device's manuals.

An upload is the file's bytes as the request body (``POST manuals/upload?name=X``,
``application/octet-stream``), at most ``api.web.max_upload_mb``, of a format
that ``appliance knowledge add`` reads. It is kept in ``<data_dir>/manuals/<name>``
and indexed there by :class:`appliance.knowledge.KnowledgeIndex`, on a thread, one
upload at a time; ``GET manuals/progress`` tells the page how far it got. A file
that cannot be indexed gets the one line ``knowledge add`` prints for it (named
by its file name) and changes nothing: the file it would have replaced is put
back. The running appliance sees a change at its next question: its
:class:`~appliance.knowledge.Retriever` reloads the vectors when the index changed,
and opens the index if it did not exist yet.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from appliance.api.errors import ApiError, Problem
from appliance.api.http_body import BODY_TIMEOUT_S, read_json
from appliance.console.app import View
from appliance.console.roles import Access
from appliance.knowledge import KnowledgeError, KnowledgeIndex, Retriever, index_path
from appliance.knowledge.embedding import Embedder
from appliance.knowledge.formats import FORMATS, format_of
from appliance.knowledge.index import removed_line

if TYPE_CHECKING:
    from appliance.console.app import Console
    from appliance.knowledge import Added

BLOCK = 1 << 16
SEARCH_K = 5
MAX_QUERY_CHARS = 500
_PLAIN_NAME = re.compile(r"[^\x00-\x1f\x7f/\\]{1,200}")


@dataclass
class Indexing:
    """The upload being indexed, or the last one: what the page's progress bar shows.

    ``stage`` is ``receiving``, ``pages`` (a PDF being read), ``passages`` (being
    embedded), ``done`` or ``failed``; ``line`` is what the CLI would have printed.
    """

    name: str
    stage: str = "receiving"
    done: int = 0
    total: int = 0
    line: str = ""

    def progress(self, stage: str, done: int, total: int) -> None:
        """The index's progress callback (called on the indexing thread)."""
        self.stage, self.done, self.total = stage, done, total


def _refuse(line: str, problem: Problem = Problem.BAD_REQUEST) -> ApiError:
    return ApiError(problem, line)


def _cli_line(exc: KnowledgeError, path: Path, name: str) -> str:
    """The line ``appliance knowledge add NAME`` prints, run where the file is kept."""
    text, prefix = str(exc), f"{path}: "
    if text.startswith(prefix):
        text = f"{name}: {text[len(prefix):]}"
    return f"appliance: {text}"


class Manuals(View):
    """The page and its routes; owns the writer of the index and the indexing task."""

    def __init__(self, console: Console) -> None:
        self.console = console
        settings = console.parts.settings
        self.knowledge = settings.knowledge
        self.path = index_path(settings.data_dir)
        self.store = settings.data_dir / "manuals"
        self.limit = int(console.web.max_upload_mb * 1e6)
        self.job: Indexing | None = None
        self.busy = False  # set on the loop before any await: one change at a time
        self._task: asyncio.Task[Added] | None = None
        self._embedder: Embedder | None = None
        self._writer: KnowledgeIndex | None = None
        self._retriever: Retriever | None = None
        self._opening = threading.Lock()  # the threads that search and index open them once
        self._searching = asyncio.Lock()  # one search at a time: each uses every core

    def add_routes(self, console: Console) -> None:
        """``/manuals`` and its JSON routes."""
        console.add("GET", "/manuals", self.page, Access.ADMIN)
        console.add("GET", "/manuals/documents", self.documents, Access.ADMIN)
        console.add("GET", "/manuals/progress", self.progress, Access.ADMIN)
        console.add("GET", "/manuals/search", self.search, Access.ADMIN)
        console.add("POST", "/manuals/upload", self.upload, Access.ADMIN)
        console.add("POST", "/manuals/remove", self.remove, Access.ADMIN)

    async def close(self) -> None:
        """Let an indexing in progress finish (it is one transaction), then close the index."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        for opened in (self._writer, self._retriever):
            if opened is not None:
                opened.close()

    # --- the page and what it reads ------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The list, the upload form and the search box."""
        return self.console.pages.render(request, "manuals.html", "Manuals", {
            "enabled": self.knowledge.enabled, "documents": await self._documents(),
            "accept": ",".join(sorted(FORMATS)), "max_mb": self.limit / 1e6})

    async def documents(self, _request: web.Request) -> web.StreamResponse:
        """``{"documents": [{name, format, title, passages, pages, bytes, added}]}``."""
        return web.json_response({"documents": await self._documents()})

    async def progress(self, _request: web.Request) -> web.StreamResponse:
        """The current (or last) upload's :class:`Indexing`, ``{}`` before the first."""
        return web.json_response(asdict(self.job) if self.job is not None else {})

    async def _documents(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        index = KnowledgeIndex(self.path)  # its own connection: the writer may be busy
        try:
            return [{"name": d.name, "format": d.format, "title": d.title,
                     "passages": d.chunks, "pages": d.pages, "bytes": d.bytes,
                     "added": d.added} for d in index.documents()]
        finally:
            index.close()

    async def search(self, request: web.Request) -> web.StreamResponse:
        """``GET manuals/search?q=...``: ``{"passages": [{doc, section, page?, score, text}]}``."""
        query = request.query.get("q", "").strip()[:MAX_QUERY_CHARS]
        if not query:
            return web.json_response({"passages": []})
        try:
            async with self._searching:
                found = await asyncio.to_thread(self._search, query)
        except KnowledgeError as exc:
            raise _refuse(f"appliance: {exc}") from None
        return web.json_response({"passages": [p.to_json() for p in found],
                                  "min_score": self.knowledge.min_score})

    def _search(self, query: str) -> list[Any]:
        with self._opening:
            if self._retriever is None:
                if not self.path.exists():
                    return []
                self._retriever = Retriever(self.path, self._embed())
        return self._retriever.search(query, SEARCH_K)

    def _open_writer(self) -> KnowledgeIndex:
        """The index to change (created on first use), opened once."""
        with self._opening:
            if self._writer is None:  # its embedder loads when a file gets as far as needing it
                self._writer = KnowledgeIndex(self.path, self._embedder)
            return self._writer

    def _embed(self) -> Embedder:
        """The embedding model, loaded once and shared by the writer and the search.

        Called with ``_opening`` held.
        """
        if self._embedder is None:
            self._embedder = self._writer.embedder if self._writer is not None \
                else Embedder.beside(self.path)
        return self._embedder

    # --- changes ---------------------------------------------------------------------------

    def _claim(self) -> None:
        """Take the one slot for a change, or refuse in one line."""
        if self.busy:
            being = f" ({self.job.name})" if self.job is not None else ""
            raise _refuse(f"appliance: a manual is being indexed{being}; try again when it "
                          "is done", Problem.CONFLICT)
        self.busy = True

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``POST manuals/upload?name=FILE`` with the file as the body: indexed, or one line."""
        name = request.query.get("name", "")
        if not _PLAIN_NAME.fullmatch(name) or name.startswith(".") or name != name.strip():
            raise _refuse(f"appliance: {name[:80]!r}: not a plain file name")
        try:
            format_of(Path(name))
        except KnowledgeError as exc:
            raise _refuse(f"appliance: {name}: {exc}") from None
        self._claim()
        job = self.job = Indexing(name)
        try:
            staged = await self._receive(request, job)
        except BaseException as exc:
            self.busy = False
            job.stage, job.line = "failed", str(exc) if isinstance(exc, ApiError) else ""
            raise
        self._task = asyncio.create_task(self._index(request, staged, job))
        # Shielded: a browser that goes away does not stop the indexing half way.
        try:
            added = await asyncio.shield(self._task)
        except KnowledgeError as exc:
            raise _refuse(str(exc)) from None
        return web.json_response({"notice": job.line, "document": added.name})

    async def _receive(self, request: web.Request, job: Indexing) -> Path:
        """The body, written to ``manuals/.incoming/<name>``; over the limit is one line.

        Each block must come within ``body_timeout_s``: a client that stalls does not
        keep the one upload slot.
        """
        declared = request.content_length
        if declared is not None and declared > self.limit:
            raise _refuse(self._too_large(job.name, declared, partial=False), Problem.TOO_LARGE)
        job.total = declared or 0
        staged = self.store / ".incoming" / job.name
        await asyncio.to_thread(staged.parent.mkdir, parents=True, exist_ok=True)
        out = await asyncio.to_thread(staged.open, "wb")
        stall_s = request.app[BODY_TIMEOUT_S]
        try:  # any way out but the end of the body: the staged file is closed and deleted
            try:
                while True:
                    async with asyncio.timeout(stall_s):
                        block = await request.content.read(BLOCK)
                    if not block:
                        break
                    job.done += len(block)
                    if job.done > self.limit:
                        raise _refuse(self._too_large(job.name, job.done, partial=True),
                                      Problem.TOO_LARGE)
                    await asyncio.to_thread(out.write, block)
            except TimeoutError:
                raise _refuse(f"appliance: {job.name}: the upload stalled (nothing came for "
                              f"{stall_s:g} s)", Problem.TIMEOUT) from None
            except web.RequestPayloadError:
                raise _refuse(f"appliance: {job.name}: the upload was cut short") from None
        except BaseException:
            await asyncio.to_thread(out.close)
            staged.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(out.close)
        return staged

    def _too_large(self, name: str, size: int, *, partial: bool) -> str:
        more = "more than " if partial else ""
        return (f"appliance: {name}: {more}{size / 1e6:.3g} MB is over api.web.max_upload_mb "
                f"({self.limit / 1e6:.3g} MB)")

    async def _index(self, request: web.Request, staged: Path, job: Indexing) -> Added:
        """Index the staged file on a thread; the CLI's line, and the journal, either way."""
        try:
            added = await asyncio.to_thread(self._index_file, staged, job)
        except KnowledgeError as exc:
            job.stage, job.line = "failed", _cli_line(exc, self.store / job.name, job.name)
            raise KnowledgeError(job.line) from None
        finally:
            self.busy = False
        job.stage, job.line = "done", added.line()
        self.console.audit(request, "manual_add", job.line)
        return added

    def _index_file(self, staged: Path, job: Indexing) -> Added:
        """Put the file in place and index it; on failure put back the one it replaced."""
        final = self.store / staged.name
        previous = staged.with_name(staged.name + ".previous")
        had = final.exists()
        try:
            if had:
                os.replace(final, previous)
            os.replace(staged, final)
        except OSError as exc:
            raise KnowledgeError(f"{final}: cannot keep it ({exc.strerror or exc})") from None
        try:
            added = self._open_writer().add(final, max_file_mb=self.knowledge.max_file_mb,
                                     progress=job.progress)
        except BaseException:
            if had:
                os.replace(previous, final)
            else:
                final.unlink(missing_ok=True)
            raise
        previous.unlink(missing_ok=True)
        return added

    async def remove(self, request: web.Request) -> web.StreamResponse:
        """``POST manuals/remove {"name"}``: out of the index, and its kept file deleted."""
        name = str((await read_json(request)).get("name", ""))
        self._claim()
        try:
            removed = await asyncio.to_thread(self._remove, Path(name).name)
        except KnowledgeError as exc:
            raise _refuse(f"appliance: {exc}", Problem.NOT_FOUND) from None
        finally:
            self.busy = False
        line = removed_line(Path(name).name, removed)
        self.console.audit(request, "manual_remove", line)
        return web.json_response({"notice": line})

    def _remove(self, name: str) -> int:
        removed = self._open_writer().remove(name)
        (self.store / name).unlink(missing_ok=True)
        return removed

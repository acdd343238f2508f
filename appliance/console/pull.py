"""A model pull that runs in the server: one at a time, cancellable, its progress kept.

The console's pull is ``appliance models pull NAME`` on a thread: the same
trusted catalog (:func:`appliance.model_pull.trusted_catalog`, a signed mirror when one
is set), the same resumable, verified :func:`appliance.download.download`, the
same lines. It belongs to the server, not to a page: closing the page leaves it
running, and the page opened again shows it. Only models the catalog has a
sha256 for are pulled from here. Cancelling stops it at the next block that
arrives; the ``.part`` file stays, and the next pull resumes it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import ApplianceError, DownloadError
from appliance.logs import get_logger
from appliance.model_pull import OnProgress, pull_model

if TYPE_CHECKING:
    from appliance.catalog import CatalogEntry
    from appliance.config import Settings

log = get_logger("console")


class PullCancelled(DownloadError):
    """The pull was cancelled from the console."""


@dataclass
class PullState:
    """What the page shows of a pull: ``state`` is running, cancelling, done, failed or cancelled.

    ``rate`` is bytes per second since the pull started (``None`` until known);
    ``left_s`` the time left at that rate; ``line`` the CLI's last line.
    """

    name: str
    state: str = "running"
    file: str = ""
    done: int = 0
    total: int | None = None
    rate: float | None = None
    left_s: float | None = None
    line: str = ""

    def to_json(self) -> dict[str, Any]:
        """The state as JSON."""
        return asdict(self)


class Pull:
    """One pull: :meth:`run` on a thread, :meth:`cancel` from the loop."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.state = PullState(name)
        self._cancelled = threading.Event()
        self._started = time.monotonic()
        self._first: int | None = None  # the bytes already there when this file started

    def cancel(self) -> None:
        """Stop at the next block that arrives."""
        self._cancelled.set()
        if self.state.state == "running":
            self.state.state = "cancelling"

    def progress(self, done: int, total: int | None) -> None:
        """The download's progress callback (on the pull's thread)."""
        if self._cancelled.is_set():
            raise PullCancelled(f"{self.state.name}: pull cancelled at {done} bytes; pull "
                                "again to resume")
        now = time.monotonic()
        if self._first is None:
            self._first, self._started = done, now
        state = self.state
        state.done, state.total = done, total
        elapsed = now - self._started
        if elapsed > 0.5 and done > self._first:
            state.rate = (done - self._first) / elapsed
            state.left_s = (total - done) / state.rate if total else None

    def run(self) -> str:
        """Pull the model as ``appliance models pull`` does; the line it prints."""
        _entry, line = pull_model(self.settings, self.state.name, self._file)
        return line

    def _file(self, _entry: CatalogEntry, path: Path) -> OnProgress:
        """A file's download starts: its progress from zero, told to :meth:`progress`."""
        self.state.file, self._first = path.name, None
        return self.progress


class Puller:
    """The console's one pull at a time, and the last one's outcome."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Pull | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether a pull is going."""
        return self._task is not None and not self._task.done()

    def start(self, name: str) -> Pull:
        """Start pulling ``name``; the caller checked that none is running."""
        assert not self.running
        pull = self.current = Pull(self.settings, name)
        self._task = asyncio.create_task(self._run(pull))
        return pull

    async def _run(self, pull: Pull) -> None:
        state = pull.state
        try:
            state.line = await asyncio.to_thread(pull.run)
            state.state = "done"
        except PullCancelled as exc:
            state.state, state.line = "cancelled", str(exc)
        except (ApplianceError, OSError) as exc:
            state.state, state.line = "failed", f"appliance: {exc}"
        log.info("model_pull_ended", model=state.name, state=state.state, line=state.line)

    def cancel(self) -> bool:
        """Cancel the running pull; False if none is running."""
        if not self.running or self.current is None:
            return False
        self.current.cancel()
        return True

    async def close(self) -> None:
        """Cancel a running pull and wait for its thread."""
        if self._task is not None:
            self.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

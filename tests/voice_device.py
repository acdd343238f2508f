"""A voice device run as a supervisor in the test process (for the voice test modules)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.service.supervisor import Supervisor
from tests.conftest import BASE, device_config
from tests.services import Peer, run_supervisor
from tests.speech import FAST_WAV, SHORT_ANSWERS, share_korean_vosk


def run_in_process(tmp_path: Path, model_path: Path, port: int, voice: str,
                   monkeypatch: pytest.MonkeyPatch, action: Callable[[Peer], None]) -> Peer:
    """Device ``t1`` with the ``voice`` section as a supervisor in this process.

    What ``appliance run`` does for voice, without a second process that loads the
    Korean model again (about 2 CPU-seconds): the supervisor hears with
    :func:`korean_vosk`, reads WAV sources fast (:data:`FAST_WAV`) and answers briefly.
    ``action`` runs on a thread once the device is idle, then the device stops; the
    peer it gets and that is returned subscribed before the device started.
    """
    share_korean_vosk(monkeypatch)
    for name, value in FAST_WAV.items():
        monkeypatch.setenv(name, value)
    cfg = device_config(tmp_path, model_path, port, "t1", SHORT_ANSWERS["llm"]["max_tokens"],
                        f"thermal:\n  zone_path: {tmp_path / 't'}\n" + voice)
    peer = Peer(port, [f"{BASE}/#"])

    async def act(_supervisor: Supervisor) -> None:
        await asyncio.to_thread(action, peer)

    try:
        run_supervisor(load_settings(cfg), cfg, None, act)
    finally:
        peer.close()
    return peer

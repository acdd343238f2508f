"""Thousands of hostile HTTP requests and Wyoming events against ``appliance run``.

Each hostile case gets exactly one error in its API's own shape (see
:mod:`appliance.bench.fuzz_http` and :mod:`appliance.bench.fuzz_wyoming` for
the contract per category), every valid request between them is answered, and
the service ends alive, ``idle`` and about as large as it began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bench.broker import free_port
from appliance.bench.fuzz_http import HTTP_KINDS, http_cases
from appliance.bench.fuzz_servers import category, hostile_cases, run_server_fuzz
from appliance.bench.fuzz_wyoming import WYOMING_KINDS, wyoming_cases
from appliance.hardware import rss_bytes
from tests.conftest import BASE, smollm2_path
from tests.helpers import keep_notify_drained
from tests.services import ApplianceProcess, Broker, Peer
from tests.speech import korean_model

HOST = "127.0.0.1:11434"
MODEL = smollm2_path().stem


def test_the_generator_covers_every_category() -> None:
    kinds = {category(case) for case in hostile_cases(HOST, MODEL, 2000)}
    wanted = {f"http: {k}" for k in HTTP_KINDS} | {f"wyoming: {k}" for k in WYOMING_KINDS}
    assert wanted <= kinds, wanted - kinds
    assert hostile_cases(HOST, MODEL, 300) == hostile_cases(HOST, MODEL, 300)
    assert hostile_cases(HOST, MODEL, 300, seed=8) != hostile_cases(HOST, MODEL, 300)
    assert http_cases(HOST, MODEL, 500) == http_cases(HOST, MODEL, 500)
    assert wyoming_cases(500) == wyoming_cases(500)


@pytest.mark.slow
def test_two_thousand_hostile_requests_and_events_one_error_each(
        start: Callable[..., ApplianceProcess], broker: Broker, tmp_path: Path) -> None:
    http_port, wyoming_port = free_port(), free_port()
    # n_ctx 512: a tool schema that would fill more of the context is refused at once
    # (context_length_exceeded, one error in the API's shape) instead of keeping the model
    # busy for seconds; the valid requests and the smaller answerable schemas still run.
    app = start("  ask_rate_per_min: 100000\n  queue_size: 256\n  discovery: {enabled: false}\n"
                "llm: {n_ctx: 512, max_tokens: 16}\n"
                f"api:\n  http: {{listen: '127.0.0.1:{http_port}'}}\n"
                f"  wyoming: {{listen: 'tcp://127.0.0.1:{wyoming_port}', zeroconf: false}}\n"
                f"voice:\n  model_path: {korean_model()}\n  tts: espeak-ng\n  tts_voice: en\n")
    keep_notify_drained(app)
    assert app.proc is not None
    pids = (app.proc.pid, app.worker_pid())
    state = Peer(broker.port, [f"{BASE}/state"])
    try:
        state.wait_for(lambda m: m.json()["state"] == "idle")
        result = asyncio.run(run_server_fuzz(
            http_port, wyoming_port, MODEL, 2000, lambda: sum(map(rss_bytes, pids)),
            asr=True, tts=True))
        assert result.aborted is None, result.aborted
        assert result.sent == 2000
        assert result.failing() == {}, "\n".join(
            f"{kind}: {t.failed} of {t.sent} failed ({t.skipped} not sent), e.g. {t.failures[:2]}"
            for kind, t in result.tallies.items() if t.failed)
        assert result.valid_failures == []
        assert result.valid_answered == result.valid_asked == 40
        assert result.rss_growth < 30 << 20, f"RSS grew by {result.rss_growth >> 20} MiB"
        assert app.proc.poll() is None
        final = state.wait_for(lambda m: m is state.seen[-1] and m.json()["state"] == "idle", 60)
        assert final.json()["problems"] == {} and final.json()["queue_depth"] == 0
    finally:
        state.close()

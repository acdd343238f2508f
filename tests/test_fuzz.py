"""Thousands of hostile payloads against ``appliance run``: one error each, nothing else breaks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bench.fuzz import hostile_inputs, run_fuzz
from appliance.hardware import rss_bytes
from tests.conftest import BASE
from tests.services import ApplianceProcess, Broker, Peer

RULE_TOPIC = "zigbee2mqtt/greenhouse"
FUZZ_CONFIG = ("  ask_rate_per_min: 100000\n  queue_size: 64\n  stream_answers: false\n"
               "  discovery: {enabled: false}\n")
FUZZ_RULE = (f"  - name: outside\n    source: {RULE_TOPIC}\n    when: temperature > 1000\n"
             "    prompt: It is {temperature} degrees.\n")


def test_the_generator_covers_every_category() -> None:
    kinds = {h.kind.split(":")[0] + ":" + h.kind.split(":")[-1].strip()
             for h in hostile_inputs(BASE, RULE_TOPIC, 2000)}
    for wanted in ("ask:invalid json", "ask:invalid utf-8", "ask:oversize", "ask:wrong types",
                   "ask:unknown fields", "ask:lone surrogate", "ask:deep nesting",
                   "event:huge integer", "event:lone surrogate", "event:deep nesting",
                   "event:unknown name", "cancel:cancel", "response topic:response topic",
                   "odd properties:odd properties"):
        assert wanted in kinds, wanted
    assert hostile_inputs(BASE, RULE_TOPIC, 300) == hostile_inputs(BASE, RULE_TOPIC, 300)


@pytest.mark.slow
def test_two_thousand_hostile_payloads_one_error_each(
        start: Callable[..., ApplianceProcess], broker: Broker, tmp_path: Path) -> None:
    app = start(FUZZ_CONFIG, root=FUZZ_RULE)
    assert app.proc is not None
    state = Peer(broker.port, [f"{BASE}/state", f"{BASE}/answer"])
    try:
        state.wait_for(lambda m: m.topic == f"{BASE}/state" and m.json()["state"] == "idle")
        before = rss_bytes(app.proc.pid)
        result = run_fuzz(broker.port, BASE, RULE_TOPIC, 2000, valid_every=100)
        after = rss_bytes(app.proc.pid)
        assert result.sent == 2000
        assert result.errors == result.sent, f"{result.errors} errors for {result.sent} inputs"
        assert result.valid_answered == result.valid_asked == 20
        assert result.unexpected == []  # no answer leaked to a refused response topic
        assert (after - before) < 20 << 20, f"RSS grew by {(after - before) >> 20} MiB"
        assert app.proc.poll() is None
        state.publish(f"{BASE}/ask", json.dumps({"id": "last", "text": "Hi", "max_tokens": 2}))
        state.wait_for(lambda m: m.topic == f"{BASE}/answer" and m.json()["id"] == "last")
        final = state.wait_for(lambda m: m.topic == f"{BASE}/state" and m is state.seen[-1]
                               and m.json()["state"] == "idle", 40)
        assert final.json()["problems"] == {} and final.json()["queue_depth"] == 0
    finally:
        state.close()

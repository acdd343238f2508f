"""The dispatcher with a real model worker, a real bridge and a real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.bench.broker import LocalBroker
from appliance.config import load_settings
from appliance.generate.local import ModelWorker
from appliance.mqtt.bridge import Bridge
from appliance.mqtt.contract import Topics
from appliance.protocol.messages import Request
from appliance.rules import RuleSet
from appliance.service.dispatcher import Dispatcher
from appliance.service.journal import Journal
from appliance.service.router import Router
from appliance.service.status import Status
from tests.conftest import device_config
from tests.helpers import eventually_async
from tests.services import Peer

pytestmark = pytest.mark.slow  # a real model worker and broker


def test_voice_preempts_a_sensor_generation(tmp_path: Path, model_path: Path) -> None:
    broker = LocalBroker(tmp_path / "broker")
    broker.start()
    cfg = device_config(
        tmp_path, model_path, broker.port, "d1", 80,
        {"rules": [{"name": "hot", "source": "greenhouse", "when": "temperature > 40",
                    "prompt": "Write a very long story about a greenhouse at {temperature} "
                              "degrees."}]})
    settings = load_settings(cfg)
    topics = Topics.under(settings.base_topic)
    peer = Peer(broker.port, [f"{topics.base}/#"])

    async def scenario() -> None:
        journal = Journal(tmp_path / "journal.sqlite3")
        worker = ModelWorker(cfg)
        bridge = Bridge(settings, journal, [], lambda _m: None)
        dispatcher = Dispatcher(router=Router(worker), outlet=bridge, journal=journal,
                                topics=topics, rules=RuleSet(settings.rules, settings.base_topic),
                                status=Status(), queue_size=4, stream=True,
                                llm=settings.llm)
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(dispatcher.run())]
        bridge.start()
        await asyncio.wait_for(worker.ready.wait(), 60)
        assert dispatcher.on_event(topics.event("greenhouse"), {"temperature": 45}) == 1
        sensor = await eventually_async(lambda: dispatcher.running, 60, "the sensor generation")
        await eventually_async(lambda: dispatcher.outlets.streamed.get(sensor.id, 0) > 0, 60,
                               "the sensor generation's first chunk")  # under way
        dispatcher.submit(Request(id="v1", source="voice", text="Say hello."))
        await eventually_async(lambda: dispatcher.running is None and not len(dispatcher.queue),
                               120, "idle dispatcher")
        assert journal.pending() == []
        await worker.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.close()

    try:
        asyncio.run(scenario())
        voice = peer.wait_for(lambda m: m.topic == topics.answer)
        alert = peer.wait_for(lambda m: m.topic == topics.alert)
        order = [m.topic for m in peer.seen if m.topic in (topics.answer, topics.alert)]
        assert order == [topics.answer, topics.alert]  # voice first, the sensor rule after
        assert voice.json()["source"] == "voice" and voice.json()["id"] == "v1"
        assert alert.json()["finish_reason"] in ("stop", "length")  # rerun, not cancelled
    finally:
        peer.close()
        broker.stop()


def test_a_cancelled_worker_run_ends_and_leaves_no_worker_behind(
        tmp_path: Path, model_path: Path) -> None:
    """Torn down without ``stop()`` (a failed in-process run): it must not wait forever."""
    cfg = device_config(tmp_path, model_path, 1, "d1", 8)

    async def scenario() -> int:
        worker = ModelWorker(cfg)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 60)
        pid = worker.pid
        assert pid is not None
        running.cancel()
        done, _ = await asyncio.wait([running], timeout=10)
        assert done, "the cancelled worker run never ended"
        return pid

    pid = asyncio.run(scenario())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped

"""LoRA adapters through the real model worker process: loaded at its start, chosen per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.bench.lora_files import LoraSpec, write_lora
from appliance.generate.base import GenerationFailed
from appliance.generate.local import ModelWorker
from appliance.llm import ChatRequest
from tests.helpers import write_config

QUESTION = "Name three colours of apples."


@pytest.mark.slow
def test_the_worker_answers_with_the_adapter_a_request_names(tmp_path: Path,
                                                             model_path: Path) -> None:
    adapter = write_lora(tmp_path / "plant_care.gguf", model_path,
                         LoraSpec(seed=2, b_std=0.2, blocks=(0, 1, 2, 3)))
    config = write_config(tmp_path / "config.yaml",
                          {"llm": {"adapters": {"plant_care": {"path": adapter}}}})

    async def scenario() -> tuple[list[str], str]:
        worker = ModelWorker(config)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 120)
            texts = []
            for name in ("plant_care", None, "plant_care", None):
                done = await asyncio.wait_for(
                    worker.generate(ChatRequest(QUESTION, max_tokens=24, adapter=name)), 120)
                texts.append(done.text)
            with pytest.raises(GenerationFailed) as caught:
                await asyncio.wait_for(worker.generate(ChatRequest(QUESTION, adapter="x")), 120)
            return texts, str(caught.value)
        finally:
            await worker.stop()
            await running

    texts, error = asyncio.run(scenario())
    assert texts[0] == texts[2] != texts[1] == texts[3]
    assert "unknown adapter 'x'; llm.adapters has: plant_care" in error

"""LoRA adapters on the HTTP APIs: ``<model>:<adapter>`` is listed, and answers with the adapter.

Against ``appliance run``, with the real ollama and openai clients, as in
tests/test_api_http.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from appliance.api.model_card import ModelCard
from appliance.api.model_names import adapter_of, answered_name, variant_names
from appliance.bench.broker import free_port
from appliance.bench.lora_files import LoraSpec, write_lora
from tests.helpers import MODEL, LazyModule, keep_notify_drained, llm_config, write_config
from tests.services import ApplianceProcess, Broker

ollama = LazyModule("ollama")
openai = LazyModule("openai")

QUESTION = "Name three colours of apples."
VARIANT = f"{MODEL}:plant_care"


def _card(name: str = "smollm2") -> ModelCard:
    return ModelCard(name, 1, "0" * 64, datetime.now(UTC), "llama", "135M", "Q4_1", 1024)


def test_model_names_map_to_adapters() -> None:
    card = _card()
    assert variant_names(card, ["plant_care"]) == ["smollm2:plant_care"]
    assert adapter_of(card, ["plant_care"], "smollm2") is None
    assert adapter_of(card, ["plant_care"], "SmolLM2:latest") is None
    assert adapter_of(card, ["plant_care"], "smollm2:Plant_Care") == "plant_care"
    assert answered_name("smollm2:latest", card, None) == "smollm2:latest"
    assert answered_name("smollm2:latest", card, "plant_care") == "smollm2:plant_care"
    for unknown in ("smollm2:other", "plant_care", "llama3:plant_care"):
        with pytest.raises(LookupError):
            adapter_of(card, ["plant_care"], unknown)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``appliance run`` with an adapter and the HTTP API; its URL."""
    workdir = tmp_path_factory.mktemp("lora_api")
    broker = Broker(workdir / "broker")
    broker.start()
    llm = llm_config(24)
    adapter = write_lora(workdir / "plant_care.gguf", llm["model_path"],
                         LoraSpec(seed=2, b_std=0.2, blocks=(0, 1, 2, 3)))
    port = free_port()
    config = write_config(workdir / "config.yaml", {
        "device_id": f"lora{port}", "mqtt": {"port": broker.port},
        "llm": {**llm, "adapters": {"plant_care": {"path": adapter}}},
        "api": {"http": {"listen": f"127.0.0.1:{port}"}}})
    process = ApplianceProcess(workdir, config)
    process.start()
    keep_notify_drained(process)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.close()
        broker.stop()


@pytest.mark.slow
def test_ollama_lists_and_answers_with_an_adapter(app: str) -> None:
    client = ollama.Client(host=app)
    names = [m.model for m in client.list().models]
    assert names == [f"{MODEL}:latest", VARIANT]

    def ask(model: str) -> str:
        done = client.chat(model=model, messages=[{"role": "user", "content": QUESTION}],
                           options={"temperature": 0})
        assert done.model == (VARIANT if model == VARIANT else f"{MODEL}:latest")
        return done.message.content or ""

    with_adapter, base = ask(VARIANT), ask(MODEL)
    assert with_adapter != base
    assert ask(VARIANT) == with_adapter
    assert client.generate(model=VARIANT, prompt=QUESTION,
                           options={"temperature": 0}).response == with_adapter
    with pytest.raises(ollama.ResponseError) as caught:
        ask(f"{MODEL}:nope")
    assert caught.value.status_code == 404


@pytest.mark.slow
def test_openai_lists_and_answers_with_an_adapter(app: str) -> None:
    client = openai.OpenAI(base_url=f"{app}/v1", api_key="none")
    assert [m.id for m in client.models.list()] == [MODEL, VARIANT]
    done = client.chat.completions.create(
        model=VARIANT, messages=[{"role": "user", "content": QUESTION}], temperature=0)
    assert done.model == VARIANT
    base = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0)
    assert done.choices[0].message.content != base.choices[0].message.content

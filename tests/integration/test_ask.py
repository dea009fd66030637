"""The first agent against the real vLLM server."""

from pathlib import Path

import httpx
import pytest

from strop.agents.graph import build_agent, chat_model, stream_answer
from strop.config import load_settings
from strop.serving.endpoint import connect
from strop.serving.server import VLLMServer
from tests.integration.conftest import strop

pytestmark = pytest.mark.integration


def test_cli_ask_answers_paris_on_the_running_server(live):
    result = strop("ask", "What is the capital of France?", env=live.env)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Error" not in result.stderr


def test_agent_streams_the_answer_in_several_chunks(live):
    settings = load_settings()
    endpoint = connect(settings)
    assert endpoint.managed and endpoint.base_url == live.record.base_url
    chunks = list(stream_answer(build_agent(chat_model(endpoint, settings.sampling)), "What is the capital of Italy?"))
    assert len(chunks) > 3
    assert "Rome" in "".join(chunks)


def test_same_server_is_reachable_as_an_external_llm_url(live, monkeypatch):
    monkeypatch.setenv("STROP_LLM_URL", live.record.url)
    endpoint = connect(load_settings())
    assert not endpoint.managed
    assert endpoint.model == "SmolLM2-135M-Instruct"


def test_a_lora_adapter_hot_loads_without_a_restart(live, models_dir, tmp_path):
    adapter = make_random_lora(models_dir / "SmolLM2-135M-Instruct", tmp_path / "adapter")
    url = live.record.url
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "probe", "lora_path": str(adapter)},
                        timeout=60)
    assert loaded.status_code == 200, loaded.text
    try:
        served = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
        assert "probe" in served
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "probe", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
    finally:
        httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "probe"}, timeout=30)
    assert live.record.pid == VLLMServer(load_settings()).running().pid


def make_random_lora(base: Path, out: Path) -> Path:
    """A small untrained LoRA adapter for the real base model (peft initialises B to zero; perturb it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    peft_model.save_pretrained(out)
    return out

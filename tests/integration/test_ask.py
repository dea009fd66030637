"""The first agent against the real vLLM server."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from strop.agents.agent import Agent, Task
from strop.config import load_settings
from strop.serving.endpoint import connect
from strop.serving.server import VLLMServer
from strop.tools.toolkit import standard_tools
from strop.trajectories import TrajectoryStore
from tests.integration.conftest import strop

pytestmark = pytest.mark.integration


def test_cli_ask_answers_paris_on_the_running_server(live):
    result = strop("ask", "What is the capital of France?", env=live.env)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Error" not in result.stderr


def test_cli_ask_shows_the_calculator_call_and_the_exact_product(live):
    result = strop("ask", "What is 1234 * 5678?", env=live.env)
    assert result.returncode == 0, result.stderr
    assert "calculator: 1234 * 5678" in result.stderr
    assert result.stdout.strip() == "7006652"
    listed = strop("trajectories", "list", "--json", "--limit", "1", env=live.env)
    run = json.loads(listed.stdout.splitlines()[0])
    assert run["prompt"] == "What is 1234 * 5678?" and run["status"] == "answered" and run["answer"] == "7006652"


def test_concurrent_episodes_on_the_real_server(live, tmp_path):
    settings = load_settings()
    store = TrajectoryStore(tmp_path / "t.sqlite")
    agent = Agent.for_endpoint(settings, connect(settings), standard_tools(settings), store=store)
    questions = [f"What is {a} plus {b}?" for a, b in ((161, 390), (569, 609), (492, 155), (358, 235))]
    runs = asyncio.run(agent.run_many([Task(q, scenario="it", case_id=str(i)) for i, q in enumerate(questions)],
                                      concurrency=4))
    assert [r.prompt for r in runs] == questions
    assert all(r.status in ("answered", "budget_exhausted") for r in runs), [r.errors for r in runs]
    assert sum(r.answer == str(a + b) for r, (a, b) in zip(runs, ((161, 390), (569, 609), (492, 155), (358, 235)),
                                                              strict=True)) >= 2
    assert store.count() == 4 and all(r.completion_tokens > 0 for r in runs)


def test_same_server_is_reachable_as_an_external_llm_url(live, monkeypatch):
    monkeypatch.setenv("STROP_LLM_URL", live.record.url)
    monkeypatch.setenv("STROP_LLM_API_KEY", live.record.api_key)  # the managed server's own key
    endpoint = connect(load_settings())
    assert not endpoint.managed
    assert endpoint.model == "SmolLM2-135M-Instruct"


def test_a_lora_adapter_hot_loads_without_a_restart(live, models_dir, tmp_path):
    adapter = make_random_lora(models_dir / "SmolLM2-135M-Instruct", tmp_path / "adapter")
    url, key = live.record.url, {"Authorization": f"Bearer {live.record.api_key}"}
    loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "probe", "lora_path": str(adapter)},
                        headers=key, timeout=60)
    assert loaded.status_code == 200, loaded.text
    try:
        served = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=key, timeout=10).json()["data"]]
        assert "probe" in served
        reply = httpx.post(f"{url}/v1/chat/completions", headers=key, timeout=60, json={
            "model": "probe", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200, reply.text
    finally:
        httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "probe"}, headers=key, timeout=30)
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

"""What a round asks of serving: the active adapter loaded before rollouts and the gate, and the model folder the
next candidate trains on (stand-in server; real vLLM in bench/swap.py)."""

import json

import pytest

from strop.config import load_settings
from strop.serving.adapters import ADAPTER_META, Registry
from strop.serving.endpoint import Endpoint
from strop.serving.policy import training_base
from strop.training.loop import Improver
from tests.unit.test_adapters import serve_lora


def make_adapter(root, name, base_model=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "adapter_model.safetensors").write_bytes(name.encode())
    (folder / ADAPTER_META).write_text(json.dumps({"name": name, "parent": None, "created_at": 1.0,
                                                   "base_model": base_model}))


def test_rollouts_after_a_server_restart_load_the_active_adapter_first(tmp_path, openai_server):
    settings = load_settings(state_dir=tmp_path)
    make_adapter(settings.adapters_dir, "v1")
    registry = Registry(settings.adapters_dir)
    registry.set_active("v1", "promote", "round 1")
    served = ["base"]  # the server was restarted: only the base model
    serve_lora(openai_server, served)
    improver = Improver(settings, Endpoint(openai_server.url, "base", "EMPTY", False,
                                           adapters_dir=settings.adapters_dir))
    rnd = improver.current_round()
    (rnd.dir / "prompts.jsonl").write_text("")
    rnd.finish("prompts", {"prompts": 0, "solved": []})
    improver.rollouts(rnd)
    assert served == ["base", registry.get("v1").served_name]


def test_lora_mode_continues_the_active_adapter_over_the_base_model(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_SERVE__ADAPTER_MODE", "lora")
    settings = load_settings(state_dir=tmp_path)
    make_adapter(settings.adapters_dir, "v1")
    registry = Registry(settings.adapters_dir)
    registry.set_active("v1", "promote", "round 1")
    managed = Endpoint("http://127.0.0.1:9/v1", "base", "k", managed=True)
    base, parent = training_base(settings, registry, managed)
    assert base.name == "SmolLM2-135M-Instruct" and parent.name == "v1"


def test_merged_mode_trains_a_fresh_lora_over_the_merged_policy(tmp_path, monkeypatch):
    settings = load_settings(state_dir=tmp_path)
    make_adapter(settings.adapters_dir, "v1")
    registry = Registry(settings.adapters_dir)
    registry.set_active("v1", "promote", "round 1")
    merged = tmp_path / "models" / "merged" / "v1-x"
    monkeypatch.setattr("strop.serving.policy.ensure_merged", lambda _settings, name: merged)
    managed = Endpoint("http://127.0.0.1:9/v1", "base", "k", managed=True)
    assert training_base(settings, registry, managed) == (merged, None)


def test_a_resumed_rollouts_stage_with_every_episode_written_starts_no_copy(tmp_path, monkeypatch):
    import contextlib

    from strop.training import loop
    from strop.training.sources import Prompt

    started = []
    monkeypatch.setattr(loop, "rollout_endpoint", lambda settings, endpoint, progress: started.append(endpoint)
                        or contextlib.nullcontext(endpoint))
    monkeypatch.setattr(loop, "ensure_loaded", lambda settings, endpoint, adapter: endpoint)
    monkeypatch.setenv("STROP_IMPROVE__ROLLOUT_DTYPE", "bfloat16")
    settings = load_settings(state_dir=tmp_path)
    improver = Improver(settings, Endpoint("http://127.0.0.1:9/v1", "base", "k", managed=True))
    rnd = improver.current_round()
    (rnd.dir / "prompts.jsonl").write_text(json.dumps(Prompt("p0", "chat", "question?").__dict__) + "\n")
    for k in range(settings.improve.samples):  # what the killed stage had written: every episode
        rnd.append("rollouts.jsonl", {"prompt": "p0", "k": k, "status": "error", "error": "refused",
                                      "passed": False, "grades": [], "trajectory": None})
    result = improver.rollouts(rnd)
    assert started == [] and result["episodes"] == settings.improve.samples and result["dtype"] == "bfloat16"
    (rnd.dir / "prompts.jsonl").write_text(json.dumps(Prompt("p1", "chat", "another?").__dict__) + "\n")
    monkeypatch.setattr(loop, "Evaluator", None)  # the agent is not needed to see where it would be asked
    with pytest.raises(TypeError):  # episodes left: the copy is asked for first
        improver.rollouts(rnd)
    assert len(started) == 1

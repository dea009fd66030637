"""The adapter registry, and hot-loading against a stand-in server (the real vLLM path is in tests/integration)."""

import json

import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.serving.adapters import ADAPTER_META, Registry, load_adapter
from strop.serving.endpoint import Endpoint
from strop.serving.policy import ensure_loaded


def make_adapter(root, name, parent=None, created=0.0):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / ADAPTER_META).write_text(json.dumps({"name": name, "parent": parent, "created_at": created}))
    return folder


def test_only_complete_adapters_are_listed_oldest_first(tmp_path):
    make_adapter(tmp_path, "v2", "v1", created=2.0)
    make_adapter(tmp_path, "v1", created=1.0)
    (tmp_path / ".v3.partial").mkdir()
    (tmp_path / "v4").mkdir()  # no metadata: training never finished
    assert [a.name for a in Registry(tmp_path).adapters()] == ["v1", "v2"]
    assert Registry(tmp_path).next_name() == "v3"
    assert Registry(tmp_path).lineage("v2") == ["v2", "v1"]


def test_promotions_and_rollbacks_are_recorded_with_reasons(tmp_path):
    make_adapter(tmp_path, "v1", created=1.0)
    make_adapter(tmp_path, "v2", "v1", created=2.0)
    registry = Registry(tmp_path)
    assert registry.active is None and registry.previous() is None
    registry.set_active("v1", "promote", "round 1: +12%")
    registry.set_active("v2", "promote", "round 2: +3%")
    assert registry.active == "v2" and registry.previous() == "v1"
    registry.set_active(registry.previous(), "rollback", "tool errors doubled")
    assert registry.active == "v1"
    assert [(h["event"], h["adapter"], h["previous"]) for h in registry.history] == [
        ("promote", "v1", None), ("promote", "v2", "v1"), ("rollback", "v1", "v2")]
    with pytest.raises(StropError, match="No adapter named 'v9'"):
        registry.set_active("v9", "promote", "")
    assert registry.active == "v1"


def test_a_corrupt_registry_is_a_clear_error(tmp_path):
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(StropError, match="registry.json is unreadable"):
        _ = Registry(tmp_path).active


def serve_lora(server, served: list[str]) -> None:
    """vLLM's /v1/models and /v1/load_lora_adapter, refusing adapters named 'bad'."""
    def load(body: dict):
        if body["lora_name"].startswith("bad-"):
            return 400, {"error": "rank 64 > max_lora_rank 16"}
        served.append(body["lora_name"])
        return {}

    server.route("GET", "/v1/models", lambda _: {"data": [{"id": m} for m in served]})
    server.route("POST", "/v1/load_lora_adapter", load)


def test_loading_is_skipped_when_served_and_a_refusal_quotes_the_server(tmp_path, openai_server):
    served = ["base"]
    serve_lora(openai_server, served)
    endpoint = Endpoint(openai_server.url, "base", "EMPTY", False)
    make_adapter(tmp_path, "v1")
    make_adapter(tmp_path, "bad")
    registry = Registry(tmp_path)
    load_adapter(endpoint, registry.get("v1"))
    assert registry.get("v1").served_name in served
    assert load_adapter(endpoint, registry.get("v1")) == 0.0  # already served
    with pytest.raises(StropError, match="refused adapter bad.*max_lora_rank 16"):
        load_adapter(endpoint, registry.get("bad"))


def weights(folder, content: bytes) -> None:
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "adapter_model.safetensors").write_bytes(content)


def test_two_state_folders_on_one_server_each_get_their_own_weights(tmp_path, openai_server):
    served = ["base"]
    serve_lora(openai_server, served)
    endpoint = Endpoint(openai_server.url, "base", "EMPTY", False)
    for state, content in (("alice", b"alice's weights"), ("bob", b"bob's weights")):
        weights(make_adapter(tmp_path / state, "v1"), content)
    alice, bob = Registry(tmp_path / "alice").get("v1"), Registry(tmp_path / "bob").get("v1")
    load_adapter(endpoint, alice)
    load_adapter(endpoint, bob)  # the same name, other weights: loaded, not taken for alice's
    loaded = {body["lora_name"]: body["lora_path"] for body in openai_server.bodies("/v1/load_lora_adapter")}
    assert loaded == {alice.served_name: str(alice.path.resolve()), bob.served_name: str(bob.path.resolve())}
    asking = [Endpoint(openai_server.url, "base", "EMPTY", False, adapters_dir=tmp_path / state).serving("v1").model
              for state in ("alice", "bob")]
    assert asking == [alice.served_name, bob.served_name]  # what agents request is what was loaded


def test_retrained_weights_under_the_same_name_are_loaded_again(tmp_path, openai_server):
    served = ["base"]
    serve_lora(openai_server, served)
    endpoint = Endpoint(openai_server.url, "base", "EMPTY", False)
    folder = make_adapter(tmp_path, "v1")
    weights(folder, b"first")
    load_adapter(endpoint, Registry(tmp_path).get("v1"))
    weights(folder, b"second, longer")  # a reset state folder trains another v1
    assert load_adapter(endpoint, Registry(tmp_path).get("v1")) > 0.0
    assert len(openai_server.bodies("/v1/load_lora_adapter")) == 2


def test_the_active_adapter_is_loaded_again_after_a_server_restart(tmp_path, openai_server):
    settings = load_settings(state_dir=tmp_path)
    weights(make_adapter(settings.adapters_dir, "v1"), b"w")
    registry = Registry(settings.adapters_dir)
    registry.set_active("v1", "promote", "round 1")
    served = ["base"]  # a restarted server serves only the base model
    serve_lora(openai_server, served)
    before = Endpoint(openai_server.url, "base", "EMPTY", False, adapters_dir=settings.adapters_dir)
    endpoint = ensure_loaded(settings, before, registry.active)
    assert registry.get("v1").served_name in served
    assert endpoint.serving("v1").model == registry.get("v1").served_name  # and that is what agents ask for


def test_a_promotion_resumed_after_a_kill_keeps_the_rollback_target(tmp_path):
    make_adapter(tmp_path, "v1", created=1.0)
    make_adapter(tmp_path, "v2", "v1", created=2.0)
    registry = Registry(tmp_path)
    registry.set_active("v1", "promote", "round 1")
    registry.set_active("v2", "promote", "round 2")
    registry.set_active("v2", "promote", "round 2")  # killed before promote.done: the stage runs again
    assert registry.active == "v2" and registry.previous() == "v1"
    assert [(h["adapter"], h["previous"]) for h in registry.history] == [("v1", None), ("v2", "v1")]

"""The adapter registry, and hot-loading against a stand-in server (the real vLLM path is in tests/integration)."""

import json

import pytest

from strop.errors import StropError
from strop.serving.adapters import ADAPTER_META, Registry, load_adapter
from strop.serving.endpoint import Endpoint


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
        if body["lora_name"] == "bad":
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
    assert "v1" in served
    assert load_adapter(endpoint, registry.get("v1")) == 0.0  # already served
    with pytest.raises(StropError, match="refused adapter bad.*max_lora_rank 16"):
        load_adapter(endpoint, registry.get("bad"))

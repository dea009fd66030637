"""Pointing strop at a server the user runs. A one-route loopback server (tests/conftest.py) stands in for an
external OpenAI-compatible server's /v1/models; the real vLLM path is covered by the integration tests."""

import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.serving.endpoint import Endpoint, connect, judge_endpoint
from tests.conftest import free_port


@pytest.fixture
def models_server(openai_server):
    openai_server.route("GET", "/v1/models", lambda _: {"data": [{"id": "big-model"}, {"id": "small-model"}]})
    return openai_server.root


def test_external_server_is_used_without_starting_anything(models_server, monkeypatch, tmp_path):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STROP_LLM_URL", models_server)
    endpoint = connect(load_settings())
    assert endpoint.base_url == f"{models_server}/v1"
    assert endpoint.model == "big-model"
    assert not endpoint.managed
    assert not (tmp_path / "serve").exists()


def test_named_model_must_be_served(models_server, monkeypatch):
    monkeypatch.setenv("STROP_LLM_URL", models_server + "/v1")
    monkeypatch.setenv("STROP_LLM_MODEL", "small-model")
    assert connect(load_settings()).model == "small-model"
    monkeypatch.setenv("STROP_LLM_MODEL", "other")
    with pytest.raises(StropError, match="'other' is not served"):
        connect(load_settings())


def test_unreachable_url_names_the_setting_and_the_fix(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("STROP_LLM_URL", url)
    with pytest.raises(StropError, match="Cannot reach") as info:
        connect(load_settings())
    assert url in info.value.message and "STROP_LLM_URL" in info.value.message
    assert "unset STROP_LLM_URL" in info.value.fix


def test_judge_uses_the_agents_server_unless_a_critic_url_is_set(models_server, monkeypatch):
    agent = Endpoint(base_url="http://agent/v1", model="base", api_key="EMPTY", managed=True)
    assert judge_endpoint(load_settings(), agent) is agent
    monkeypatch.setenv("STROP_CRITIC__LLM_URL", models_server)
    monkeypatch.setenv("STROP_CRITIC__LLM_MODEL", "small-model")
    judge = judge_endpoint(load_settings(), agent)
    assert (judge.base_url, judge.model) == (f"{models_server}/v1", "small-model")
    monkeypatch.setenv("STROP_CRITIC__LLM_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StropError, match="STROP_CRITIC__LLM_URL"):
        judge_endpoint(load_settings(), agent)

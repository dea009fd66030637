"""Secrets stay out of what strop shows, and names from outside (thread ids, adapter names) cannot reach out of
the folder strop writes them into."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from strop.cli import app
from strop.config import load_settings
from strop.errors import StropError
from strop.files import inside, plain_name
from strop.serving.endpoint import connect, judge_endpoint
from strop.training.retention import adapter_meta
from strop.tui.history import PastTurn
from strop.tui.session import ChatSession

KEYS = {"STROP_LLM_API_KEY": "sk-agent-0123456789", "STROP_CRITIC__LLM_API_KEY": "sk-judge-0123456789",
        "STROP_MEMORY__API_KEY": "qdrant-key-0123456789"}


def test_strop_config_masks_every_api_key(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    for args in (["config"], ["config", "--json"]):
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert not [v for v in KEYS.values() if v in result.output], f"`strop {' '.join(args)}` shows a key"
    shown = json.loads(runner.invoke(app, ["config", "--json"]).output)
    assert shown["llm_api_key"] == shown["critic.llm_api_key"] == shown["memory.api_key"] == "**********"


def test_keys_are_secrets_in_settings_and_plain_only_where_they_are_sent(monkeypatch, openai_server):
    openai_server.route("GET", "/v1/models", lambda _: {"data": [{"id": "m"}]})
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STROP_LLM_URL", openai_server.root)
    monkeypatch.setenv("STROP_CRITIC__LLM_URL", openai_server.root)
    settings = load_settings()
    assert isinstance(settings.llm_api_key, SecretStr) and isinstance(settings.critic.llm_api_key, SecretStr)
    assert "sk-" not in repr(settings) and "qdrant-key" not in str(settings.memory)
    agent = connect(settings)
    assert agent.api_key == "sk-agent-0123456789"
    assert judge_endpoint(settings, agent).api_key == "sk-judge-0123456789"


@pytest.mark.parametrize("name", ["..", ".", "", "../../etc/passwd", "a/b", "a\\b", "/tmp/x", "x\x00y"])
def test_names_that_could_leave_their_folder_are_refused_with_a_clear_error(tmp_path, name):
    with pytest.raises(StropError) as caught:
        inside(tmp_path, name, "thread id")
    assert "thread id" in caught.value.message and "stays inside its folder" in caught.value.message


@pytest.mark.parametrize("name", ["3f2a9c01", "v12", "team-a", "notes_2024.1", "..hidden-but-plain"])
def test_plain_names_pass(tmp_path, name):
    assert plain_name(name, "adapter name") == name and inside(tmp_path, name, "x").parent == tmp_path


def export_from(tmp_path, thread_id: str):
    """ChatSession.export with its history and thread book standing in for the agent's checkpoints."""
    settings = load_settings(state_dir=tmp_path / "state")
    session = SimpleNamespace(settings=settings, history=lambda _: [PastTurn("2+2?", answer="4")],
                              book=SimpleNamespace(get=lambda _: None))
    return ChatSession.export(session, thread_id)


def test_export_of_a_thread_id_with_a_path_in_it_writes_nothing_outside(tmp_path):
    with pytest.raises(StropError, match="thread id"):
        export_from(tmp_path, "x/../../../../outside")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []
    written = export_from(tmp_path, "3f2a9c01")
    assert written.parent == (tmp_path / "state" / "exports").resolve() and "4" in written.read_text()


def test_adapter_names_read_from_the_registry_stay_in_the_adapters_folder(tmp_path):
    settings = load_settings(state_dir=tmp_path / "state")
    (tmp_path / "strop-adapter.json").write_text('{"name": "planted"}')
    with pytest.raises(StropError, match="adapter name"):
        adapter_meta(settings, "../..")

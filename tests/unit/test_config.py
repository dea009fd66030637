from pathlib import Path

import pytest

from strop.config import load_settings
from strop.errors import StropError


def write_config(monkeypatch, tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(text)
    monkeypatch.setenv("STROP_CONFIG", str(path))
    return path


def test_defaults_serve_on_loopback_with_state_in_dot_strop():
    settings = load_settings()
    assert settings.serve.host == "127.0.0.1"
    assert settings.state_dir == Path(".strop")
    assert settings.resolved_models_dir == Path(".strop/models")
    assert settings.llm_url is None


def test_toml_file_sets_nested_values(monkeypatch, tmp_path):
    text = 'state_dir = "/srv/strop"\n[serve]\nport = 9100\n[sampling]\ntemperature = 0.7\n'
    write_config(monkeypatch, tmp_path, text)
    settings = load_settings()
    assert settings.serve.port == 9100
    assert settings.sampling.temperature == 0.7
    assert settings.resolved_models_dir == Path("/srv/strop/models")


def test_environment_overrides_toml(monkeypatch, tmp_path):
    write_config(monkeypatch, tmp_path, "[serve]\nport = 9100\nmax_loras = 3\n")
    monkeypatch.setenv("STROP_SERVE__PORT", "9200")
    monkeypatch.setenv("STROP_LLM_URL", "http://gpu:8000/v1")
    settings = load_settings()
    assert settings.serve.port == 9200
    assert settings.serve.max_loras == 3  # untouched keys keep the file's value
    assert settings.llm_url == "http://gpu:8000/v1"


def test_invalid_value_names_field_and_variable(monkeypatch):
    monkeypatch.setenv("STROP_SERVE__PORT", "99999")
    with pytest.raises(StropError) as info:
        load_settings()
    assert "serve.port" in info.value.message
    assert "STROP_SERVE__PORT" in info.value.message


def test_unknown_key_in_file_is_refused(monkeypatch, tmp_path):
    write_config(monkeypatch, tmp_path, "[serve]\nprot = 9100\n")
    with pytest.raises(StropError, match="serve.prot"):
        load_settings()


def test_broken_toml_names_the_file(monkeypatch, tmp_path):
    path = write_config(monkeypatch, tmp_path, "[serve\nport = 1\n")
    with pytest.raises(StropError, match="not valid TOML") as info:
        load_settings()
    assert str(path) in info.value.message


def test_missing_config_file_from_env_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("STROP_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(StropError, match="does not exist"):
        load_settings()

from pathlib import Path

import pytest

from strop.config import cpu_has_bf16, load_settings, machine, machine_text
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


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_tile amx_bf16", True), ("fpu avx2 avx512f", False)])
def test_cpu_has_bf16_reads_the_matrix_units_from_cpuinfo(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(cpuinfo) is expected
    assert cpu_has_bf16(tmp_path / "missing") is False  # not Linux: float32, right everywhere


@pytest.mark.parametrize(("flags", "unit"), [
    ("fpu avx2 avx512f avx512_bf16 amx_bf16", "AMX"), ("fpu avx2 avx512f", "AVX-512"), ("fpu sse4_2 avx2", "AVX2"),
    ("fpu sse4_2", "none of AMX, AVX512-BF16, AVX-512, AVX2")])
def test_machine_names_the_cpu_and_its_widest_matrix_unit(tmp_path, flags, unit):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: amx_bf16\n")  # the first processor's
    about = machine(cpuinfo)
    assert (about["cpu"], about["matrix_unit"]) == ("Some CPU", unit)
    assert about["bfloat16_in_hardware"] is (unit == "AMX")
    assert machine_text(cpuinfo).startswith(f"Some CPU, {about['cores']} cores, {unit} (")
    assert machine(tmp_path / "missing")["matrix_unit"] == "unknown"  # not Linux


@pytest.mark.parametrize("has_bf16", [True, False])
def test_training_and_rollouts_default_to_bfloat16_only_where_the_cpu_multiplies_it(monkeypatch, has_bf16):
    monkeypatch.setattr("strop.config.cpu_has_bf16", lambda: has_bf16)
    assert load_settings().train.bf16 is has_bf16
    assert load_settings().serve.dtype == "float32"  # served answers stay float32's everywhere
    assert load_settings().improve.rollout_dtype == ("bfloat16" if has_bf16 else "serve")  # sampled, not served
    monkeypatch.setenv("STROP_TRAIN__BF16", "false")
    assert load_settings().train.bf16 is False  # a setting wins

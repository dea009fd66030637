"""Merged models: an adapter's LoRA merged into the weights of the model it was trained on.

A runtime LoRA costs the CPU build of vLLM about 2.5x the base model's time per token; the same
weights merged into a plain model folder cost nothing extra. In ``serve.adapter_mode = merged`` the
active adapter is served that way (the current policy), and the next round trains a fresh LoRA over it.

A merged folder is ``<models>/merged/<adapter>-<content hash>``: written into a temporary folder,
given a manifest of SHA-256 sums (like the converted base model) and a lineage file, and only then
renamed into place, so a failed or killed merge never leaves a folder that could be served.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from strop.config import Settings
from strop.errors import StropError
from strop.files import pid_alive, sha256_file, write_atomic
from strop.serving import models
from strop.serving.adapters import Adapter, Registry, adapter_digest
from strop.serving.models import MANIFEST, prepare_model, verify_model

LINEAGE = "strop-lineage.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def merged_dir(settings: Settings, adapter: Adapter) -> Path:
    return settings.resolved_models_dir.resolve() / "merged" / f"{adapter.name}-{adapter_digest(adapter)[:12]}"


def policy_model_dir(settings: Settings, verify: bool = True) -> tuple[Path, str | None]:
    """The model folder of the current policy and the adapter merged into it (None: the base model).

    ``merged`` mode: the active adapter's merged folder (merged now if missing); ``lora`` mode, an external
    server, or no active adapter: the converted base model. ``verify=False`` only names the folder.
    """
    active = Registry(settings.adapters_dir).active
    if settings.serve.adapter_mode == "lora" or settings.llm_url or active is None:
        base = models.model_dir(settings.resolved_models_dir)
        return (prepare_model(settings.resolved_models_dir) if verify else base).resolve(), None
    if not verify:
        return merged_dir(settings, Registry(settings.adapters_dir).get(active)), active
    return ensure_merged(settings, active), active


def base_model_dir(settings: Settings) -> Path:
    """The converted base model (checked), whatever the policy."""
    return prepare_model(settings.resolved_models_dir).resolve()


def ensure_merged(settings: Settings, name: str) -> Path:
    """The verified merged folder of adapter ``name``, merging it (and, if missing, its base) first."""
    registry = Registry(settings.adapters_dir)
    adapter = registry.get(name)
    target = merged_dir(settings, adapter)
    if target.exists():
        verify_model(target)
        return target
    merge_adapter(adapter, base_of(settings, adapter), target)
    registry.record_merge(name, merge_entry(target))
    return target


def base_of(settings: Settings, adapter: Adapter) -> Path:
    """The model folder ``adapter`` was trained on, rebuilt from its parent if it was merged and since removed."""
    recorded = adapter.meta.get("base_model")
    base = Path(recorded) if recorded else models.model_dir(settings.resolved_models_dir)
    if not base.exists() and base.parent.name == "merged" and adapter.parent:
        return ensure_merged(settings, adapter.parent)
    if not base.exists():
        return prepare_model(settings.resolved_models_dir)
    verify_model(base)
    expected = adapter.meta.get("base_checksum")
    if expected and expected != sha256_file(base / MANIFEST):
        raise StropError(f"Adapter {adapter.name} was trained on another version of {base} (checksum differs).",
                         fix="Serve it with serve.adapter_mode = lora, or train a new adapter on this model.")
    return base


def merge_adapter(adapter: Adapter, base: Path, target: Path) -> Path:
    """Merge ``adapter`` into a copy of ``base`` at ``target`` (all or nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _merge_weights(adapter.path, base, partial)
        _copy_model_files(base, partial)
        lineage = {"adapter": adapter.name, "adapter_sha256": adapter_digest(adapter),
                   "adapter_path": str(adapter.path),
                   "base_model": str(base), "base_manifest_sha256": sha256_file(base / MANIFEST),
                   "parent": adapter.parent, "created_at": time.time()}
        write_atomic(partial / LINEAGE, json.dumps(lineage, indent=2))
        _write_manifest(partial, adapter)
        os.replace(partial, target)
    except StropError:
        raise
    except Exception as exc:  # a damaged adapter, a full disk, an unreadable base: nothing is left half-made
        raise StropError(f"Merging adapter {adapter.name} into {base} failed: {type(exc).__name__}: {exc}",
                         fix="Check the adapter folder (`strop adapters list`) and free disk space; the server "
                             "keeps serving the current model.") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def merge_entry(folder: Path) -> dict:
    """What the registry keeps about a merged folder: where, its manifest checksum, and its lineage."""
    return {"dir": str(folder), "manifest_sha256": sha256_file(folder / MANIFEST),
            "lineage": json.loads((folder / LINEAGE).read_text())}


def _merge_weights(adapter_dir: Path, base: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out)


def _copy_model_files(base: Path, out: Path) -> None:
    """Tokenizer, chat template and generation config come from the base folder unchanged."""
    for path in base.iterdir():
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES and path.name not in (MANIFEST, LINEAGE) \
                and not (out / path.name).exists():
            shutil.copy2(path, out / path.name)


def _write_manifest(folder: Path, adapter: Adapter) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"source": f"adapter {adapter.name} ({adapter.path})", "created": time.time(), "files": files}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


def prune_merged(settings: Settings, kept: set[str]) -> int:
    """Remove merged folders no kept adapter needs: kept are each kept adapter's own merged folder, the folder
    it was trained on, and the one the server runs; a killed merge's partial folder goes too."""
    root = settings.resolved_models_dir.resolve() / "merged"
    if not root.is_dir():
        return 0
    needed = {_served_folder_name(settings)}
    for adapter in Registry(settings.adapters_dir).adapters():
        if adapter.name in kept:
            needed |= {merged_dir(settings, adapter).name, Path(adapter.meta.get("base_model") or "").name}
    pruned = 0
    for folder in root.iterdir():
        partial = ".partial-" in folder.name
        if partial and pid_alive(int(folder.name.rsplit("-", 1)[1])):
            continue  # a merge under way
        if folder.is_dir() and (partial or folder.name not in needed):
            shutil.rmtree(folder, ignore_errors=True)
            pruned += not partial
    return pruned


def _served_folder_name(settings: Settings) -> str:
    try:
        return Path(json.loads((settings.serve_dir / "server.json").read_text())["model_dir"]).name
    except (OSError, ValueError, KeyError):
        return ""



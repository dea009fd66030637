"""Bounded disk use for adapters, round data and trajectories (``[retention]``).

Kept: the newest ``keep_adapters`` adapters, the active one, its rollback target and a candidate an unfinished
round is gating; the rounds those adapters were trained in (prompts, rollouts, scores, pairs) and the newest
``keep_rounds`` rounds; every trajectory those rounds point to and every trajectory a human feedback pair came
from. Nothing a kept adapter's provenance names is ever removed.

A pruned adapter's folder keeps only ``pruned.json`` (its metadata), so its name is never reused and lineages
stay readable. A pruned round keeps its ``*.done`` reports (the history needs them). Pruned trajectories are
archived as gzipped JSON lines first unless ``retention.prune = "delete"``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

from strop.config import Settings
from strop.feedback import FeedbackLog
from strop.files import inside, read_lines
from strop.serving.adapters import ADAPTER_META, Registry
from strop.serving.merge import prune_merged
from strop.training.loop import Round
from strop.trajectories import TrajectoryStore

PRUNED_META = "pruned.json"
ROUND_DATA = ("prompts.jsonl", "rollouts.jsonl", "scores.jsonl", "judged.jsonl", "pairs.jsonl")


def prune(settings: Settings, store: TrajectoryStore, registry: Registry, now: float) -> dict[str, int]:
    """Apply the retention policy once; returns how many adapters, rounds and trajectories went."""
    adapters = kept_adapters(settings, registry)
    rounds = kept_rounds(settings, registry, adapters)
    return {"adapters": prune_adapters(registry, adapters), "merged_models": prune_merged(settings, adapters),
            "rounds": prune_rounds(settings, rounds),
            "trajectories": prune_trajectories(settings, store, protected_trajectories(settings, rounds), now)}


def round_dirs(settings: Settings) -> list[Path]:
    return sorted(d for d in settings.improve_dir.glob("round-*") if d.is_dir())


def kept_adapters(settings: Settings, registry: Registry) -> set[str]:
    names = [a.name for a in registry.adapters()]
    kept = set(names[-settings.retention.keep_adapters:]) | {registry.active, registry.previous()}
    unfinished = [d for d in round_dirs(settings)[-1:] if not (d / "promote.done").exists()]
    for folder in unfinished:  # a candidate still on its way to the gate
        with_train = read_json(folder / "train.done")
        kept.add(with_train.get("adapter"))
    return kept - {None}


def kept_rounds(settings: Settings, registry: Registry, adapters: set[str]) -> list[Path]:
    """The rounds kept adapters were trained in, the newest ``keep_rounds`` and an unfinished one."""
    folders = round_dirs(settings)
    trained_in = {a.meta.get("round") for a in registry.adapters() if a.name in adapters}
    kept = folders[-settings.retention.keep_rounds:]
    kept += [d for d in folders if Round(d).number in trained_in]
    return sorted(set(kept))


def protected_trajectories(settings: Settings, rounds: list[Path]) -> set[str]:
    """Trajectory ids kept rounds and human feedback point to."""
    ids: set[str] = set()
    for folder in rounds:
        for name in ("rollouts.jsonl", "scores.jsonl"):
            ids |= {r["trajectory"] for r in read_lines(folder / name) if r.get("trajectory")}
        ids |= _pair_sources(read_lines(folder / "pairs.jsonl"))
    return ids | _pair_sources(FeedbackLog(settings.feedback_dir).human_pairs())


def _pair_sources(pairs: list[dict[str, Any]]) -> set[str]:
    return {p["provenance"][k] for p in pairs for k in ("chosen_trajectory", "rejected_trajectory")
            if p.get("provenance", {}).get(k)}


def prune_adapters(registry: Registry, kept: set[str]) -> int:
    pruned = 0
    for adapter in registry.adapters():
        if adapter.name in kept:
            continue
        # the metadata goes first: from then on the registry no longer offers the adapter, and a kill
        # before the weights are gone leaves a folder the next pass finishes
        (adapter.path / PRUNED_META).write_text(json.dumps(adapter.meta | {"pruned_at": time.time()}, indent=2))
        (adapter.path / ADAPTER_META).unlink()
        pruned += 1
    for folder in registry.root.glob(f"*/{PRUNED_META}"):
        for item in folder.parent.iterdir():
            if item.is_dir():
                shutil.rmtree(item)
            elif item.name != PRUNED_META:
                item.unlink()
    return pruned


def prune_rounds(settings: Settings, kept: list[Path]) -> int:
    pruned = 0
    for folder in round_dirs(settings):
        data = [folder / name for name in ROUND_DATA if (folder / name).exists()]
        if folder in kept or not data or not (folder / "promote.done").exists():
            continue
        for path in data:
            path.unlink()
        pruned += 1
    return pruned


def prune_trajectories(settings: Settings, store: TrajectoryStore, protected: set[str], now: float) -> int:
    """Trajectories past ``trajectory_days`` or beyond ``max_trajectories`` (oldest first), unless protected."""
    r = settings.retention
    ages = store.ages()
    beyond = len(ages) - r.max_trajectories
    cutoff = now - r.trajectory_days * 86400
    doomed = [tid for i, (tid, at) in enumerate(ages) if (at < cutoff or i < beyond) and tid not in protected]
    if not doomed:
        return 0
    if r.prune == "archive":
        archive(settings, store, doomed, now)
    return store.delete(doomed)


def archive(settings: Settings, store: TrajectoryStore, ids: list[str], now: float) -> Path:
    """Write the runs to ``<state>/archive/trajectories-<time>.jsonl.gz`` (whole, then renamed into place)."""
    folder = settings.state_dir / "archive"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"trajectories-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.jsonl.gz"
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wt", encoding="utf-8") as fh:
        for tid in ids:
            fh.write(json.dumps(store.get(tid).to_dict(), ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def adapter_meta(settings: Settings, name: str) -> dict[str, Any]:
    """An adapter's metadata, kept or pruned (empty when unknown)."""
    folder = inside(settings.adapters_dir, name, "adapter name")
    return read_json(folder / ADAPTER_META) or read_json(folder / PRUNED_META)

"""Rollout speed and behaviour under values of `improve.rollout_dtype` and other `[improve]` settings: the same
train cases sampled the way a round samples them (K episodes per case at the rollout temperature, the round's own
code), one side after the other, alternating (A B C A B C) so drift on a shared machine hits every side.

Timed: the episodes only; the start of a server beside (when a side needs one) is reported apart. Reported per
suite: episodes per second, completion tokens, passes, the prompts the round's critic finds informative (a pair
can come of them), and the paired exact sign test on the cases whose passes differ between the sides (does the
faster side sample a worse policy?). Writes bench/results/rollout_dtype.json.

    .venv/bin/python bench/rollouts.py serve float32 bfloat16 [--cases 12] [--repeats 2]
    .venv/bin/python bench/rollouts.py bfloat16 bfloat16,concurrency=16 --out bench/results/rollout_concurrency.json
    .venv/bin/python bench/rollouts.py bfloat16,temperature=1.0 bfloat16,temperature=0.7 --cases 16 \
        --out bench/results/rollout_temperature.json

(`serve`: the serving server, with runtime LoRA; `float32`: the same weights on a server beside, without it.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SUITES = ("arithmetic", "tools", "rag", "word_problems")
console = Console()


def side_settings(value: str) -> dict[str, Any]:
    """``[improve]`` settings of a side: ``bfloat16`` or ``bfloat16,concurrency=16`` (rollout_dtype first)."""
    dtype, *others = value.split(",")
    updates: dict[str, Any] = {"rollout_dtype": dtype}
    for other in others:
        key, _, text = other.partition("=")
        updates[key] = json.loads(text)
    return updates


def one_side(improver, folder: Path, prompts: list, value: str) -> dict[str, Any]:
    """The prompts' episodes sampled with the side's ``[improve]`` settings into a round folder of their own."""
    from strop.serving.policy import rollout_endpoint
    from strop.training.critic import informative
    from strop.training.loop import Round

    settings = improver.settings.model_copy(update={"improve": improver.settings.improve.model_copy(
        update=side_settings(value))})
    rnd = Round(folder)
    folder.mkdir(parents=True)
    began = time.perf_counter()
    with rollout_endpoint(settings, improver.endpoint) as endpoint:
        started = time.perf_counter()
        side = type(improver)(settings, improver.endpoint)
        side.roll_out(rnd, prompts, lambda: endpoint)
        seconds = time.perf_counter() - started
    side.critic_of.score(rnd, {p.id: p for p in prompts})  # the round's critic: which cases could make a pair
    found = informative(rnd, settings.improve.min_margin, settings.improve.pass_over_fail)
    records = [r | {"informative": r["prompt"] in found} for r in rnd.lines("rollouts.jsonl")]
    return {"start_s": started - began, "seconds": seconds, "records": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("values", nargs="+", metavar="SIDE", help="improve.rollout_dtype of the baseline, then of "
                        "the others, each compared with it (serve, float32, bfloat16, float16), optionally followed "
                        "by other [improve] settings: bfloat16,concurrency=16.")
    parser.add_argument("--cases", type=int, default=12, help="Train cases per suite.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rollout_dtype.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STROP_STATE_DIR"] = f"{tmp}/state"
        os.environ.setdefault("STROP_MODELS_DIR", str(REPO / ".strop" / "models"))
        results = measure(args.values, args.cases, args.repeats, Path(tmp))
    report(results, args.values, args.out)


def measure(values: list[str], cases: int, repeats: int, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    from strop.config import load_settings
    from strop.scenarios.runner import Evaluator
    from strop.serving.endpoint import connect
    from strop.serving.server import VLLMServer
    from strop.training.loop import Improver
    from strop.training.sources import suite_prompt

    settings = load_settings()
    improver = Improver(settings, connect(settings))
    prompts = [suite_prompt(name, case) for name in SUITES
               for case in improver.sources.suite(name).select("train")[:cases]]
    with Evaluator(settings, improver.endpoint) as evaluator:  # the rag corpus is ingested before any timing
        for name in SUITES:
            evaluator.prepare(improver.sources.suite(name))
    sides: dict[str, list[dict[str, Any]]] = {value: [] for value in values}
    try:
        for repeat in range(repeats):
            for value in values:
                side = one_side(improver, tmp / f"{value}-{repeat}", prompts, value)
                sides[value].append(side)
                console.print(f"{value:>24}: start {side['start_s']:5.1f} s, "
                              f"{len(side['records'])} episodes in {side['seconds']:6.1f} s (run {repeat + 1})")
    finally:
        VLLMServer(settings).stop()
    return sides


def report(sides: dict[str, list[dict[str, Any]]], values: list[str], out: Path) -> None:
    from strop.scenarios.stats import p_cell

    baseline, others = values[0], values[1:]
    seconds = {v: [round(s["seconds"], 1) for s in sides[v]] for v in values}
    speedup = {v: round(statistics.mean(seconds[baseline]) / statistics.mean(seconds[v]), 3) for v in others}
    # sampled episodes differ in length: generated tokens per second is the rate that does not depend on it
    tokens_per_s = {v: round(sum(r.get("completion_tokens") or 0 for s in sides[v] for r in s["records"])
                             / sum(s["seconds"] for s in sides[v]), 1) for v in values}
    compared = {v: [compare(sides, baseline, v, name) for name in (*SUITES, "pooled")] for v in others}
    for value in others:
        table = Table(title=f"rollouts: {value} against {baseline}: episodes {speedup[value]:.2f}x faster, "
                            f"{tokens_per_s[value]} against {tokens_per_s[baseline]} generated tokens/s")
        for column in ("suite", "episodes", f"passed {baseline}", f"passed {value}", f"informative {baseline}",
                       f"informative {value}", "cases more / fewer",
                       "p two-sided", f"tokens/ep {baseline}", f"tokens/ep {value}"):
            table.add_column(column, justify="left" if column == "suite" else "right")
        for row in compared[value]:
            tokens = row["completion_tokens_per_episode"]
            table.add_row(row["suite"], str(row["episodes"]), str(row["passed"][baseline]), str(row["passed"][value]),
                          str(row["informative"][baseline]), str(row["informative"][value]),
                          f"{row['cases_more']} / {row['cases_fewer']}", p_cell(row["p_two_sided"]),
                          f"{tokens[baseline]:.0f}", f"{tokens[value]:.0f}")
        console.print(table)
    from strop.config import machine

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"values": values, "seconds": seconds, "speedup": speedup, "tokens_per_s": tokens_per_s,
                               "start_seconds": {v: [round(s["start_s"], 1) for s in sides[v]] for v in values},
                               "suites": compared, "load_average": os.getloadavg(),
                               "machine": machine()}, indent=2))
    console.print(f"wrote {out}")


def compare(sides: dict[str, list[dict[str, Any]]], baseline: str, value: str, suite: str) -> dict[str, Any]:
    """One suite (or all: ``pooled``) on two sides: passes, and the exact sign test on the cases whose passes
    differ (more or fewer of their episodes passed on ``value`` than on ``baseline``)."""
    from strop.scenarios.stats import paired

    pair = (baseline, value)
    rows = {v: [r for s in sides[v] for r in s["records"] if suite == "pooled" or r["suite"] == suite] for v in pair}
    passes = {v: Counter(f"{r['suite']}/{r['case']}" for r in rows[v] if r.get("passed")) for v in pair}
    cases = {f"{r['suite']}/{r['case']}" for v in pair for r in rows[v]}
    found = {v: {(repeat, r["prompt"]) for repeat, s in enumerate(sides[v]) for r in s["records"]
                 if (suite == "pooled" or r["suite"] == suite) and r.get("informative")} for v in pair}
    more = sum(passes[value][c] > passes[baseline][c] for c in cases)
    fewer = sum(passes[value][c] < passes[baseline][c] for c in cases)
    return {"suite": suite, "episodes": len(rows[baseline]), "cases": len(cases),
            "passed": {v: sum(passes[v].values()) for v in pair}, "informative": {v: len(found[v]) for v in pair},
            "cases_more": more, "cases_fewer": fewer,
            "p_two_sided": round(paired(len(cases), more, fewer).p_two_sided, 4),
            "completion_tokens_per_episode": {v: round(statistics.mean(r.get("completion_tokens") or 0
                                                                       for r in rows[v]), 1) for v in pair}}


if __name__ == "__main__":
    main()

"""What each part of a round buys: one finished round's rollouts trained again under other settings, every
candidate gated and tested against what the round started from (the base model, or the adapter active before it),
side by side.

Each arm copies the round's state folder, removes the round's stages from its STAGE on (prompts, rollouts, critic,
pairs or train; `as-run` keeps the round's own candidate), resumes `strop improve` with the arm's settings (environment
variables, sized like the round: `--suites`, `--prompts`, `--gate-limit`), then evaluates its candidate on the test
split that no round and no gate reads. The test run of what the round started from is made once. Gate and test runs
of every arm are compared with it per suite and pooled: wins and losses on the cases that changed, the exact
two-sided p and the exact 95% interval of the difference; with the minutes each stage the arm ran took. An arm whose
folder already holds a finished round is reused, so a stopped ablation resumes. Writes
bench/results/ablate-<name>.json.

    .venv/bin/python bench/ablate.py /path/to/state --name demo7 \\
        --arm as-run=as-run --arm dpo=train:STROP_TRAIN__RPO_ALPHA=0 \\
        --arm label-free=critic:STROP_CRITIC__USE_GOLD=false
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strop.config import machine
from strop.scenarios.report import compare as report_compare
from strop.scenarios.runs import Run, RunStore
from strop.scenarios.stats import p_cell, paired
from strop.serving.adapters import Registry
from strop.training import critic
from strop.training.answers import ANSWERS
from strop.training.history import clean
from strop.training.loop import STAGES, Round

REPO = Path(__file__).resolve().parents[1]
STROP = [sys.executable, "-m", "strop"]
# What each stage writes besides its .done file (the current side's gate run is kept and reused).
STAGE_FILES = {"prompts": ("prompts.jsonl",), "rollouts": ("rollouts.jsonl",),
               "critic": (*critic.FILES, ANSWERS),
               "pairs": ("pairs.jsonl", "human-pairs.json"), "train": ("train.name",), "gate": ("gate-candidate.run",)}
console = Console(stderr=True)


def parse_arm(text: str) -> tuple[str, str, dict[str, str]]:
    """NAME=STAGE[:KEY=VALUE,...] -> (name, stage, environment)."""
    name, _, rest = text.partition("=")
    stage, _, settings = rest.partition(":")
    if not name or stage not in ("as-run", "prompts", "rollouts", "critic", "pairs", "train"):
        raise SystemExit(f"--arm {text!r}: write NAME=STAGE[:KEY=VALUE,...] with STAGE as-run, prompts, rollouts, "
                         "critic, pairs or train")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, stage, env


def round_dir(state: Path) -> Path:
    rounds = sorted((state / "improve").glob("round-*"))
    if not rounds:
        raise SystemExit(f"{state} holds no round: run `strop demo` or `strop improve` there first")
    return rounds[-1]


def strop(state: Path, args: list[str], env: dict[str, str]) -> None:
    full = {**os.environ, "STROP_STATE_DIR": str(state), **env}
    subprocess.run([*STROP, *args], cwd=REPO, env=full, check=True)


def prepare(source: Path, target: Path, stage: str) -> None:
    """A copy of the source state with the round's stages from ``stage`` on removed (none for as-run)."""
    if (target / "improve").exists() and (round_dir(target) / "promote.done").exists():
        return
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pid", "beside.json"))
    if stage == "as-run":
        return
    rnd = round_dir(target)
    if stage == "rollouts":  # the prompts drawn during the rollouts go too
        first = json.loads((rnd / "prompts.done").read_text())["prompts"]
        lines = (rnd / "prompts.jsonl").read_text().splitlines(keepends=True)
        (rnd / "prompts.jsonl").write_text("".join(lines[:first]))
    for later in STAGES[STAGES.index(stage):]:
        for name in (f"{later}.done", *STAGE_FILES.get(later, ())):
            (rnd / name).unlink(missing_ok=True)


def test_run(state: Path, suites: list[str], adapter: str | None, env: dict[str, str]) -> str:
    """The id of a clean test-split run of ``adapter`` in ``state``, made when there is none."""
    def found() -> str | None:
        runs = [r for r in RunStore(state / "eval").list()
                if r.options.split == "test" and r.options.adapter == adapter and clean(r)]
        return runs[-1].id if runs else None

    if not found():
        strop(state, ["eval", "run", *suites, "--split", "test", *(["--adapter", adapter] if adapter else [])], env)
    return found()


def passes(state: Path, run_ids: list[str]) -> dict[tuple[str, str], bool]:
    """Pass or fail per (suite, case); a gate's retry run (a later id) overrides the episodes it ran again."""
    store = RunStore(state / "eval")
    return {(r["suite"], r["case"]): bool(r["passed"]) for run in run_ids for r in store.open(run).records()}


def gate_runs(state: Path, role: str) -> list[str]:
    return json.loads((round_dir(state) / "gate.done").read_text())["all_runs"][role]


def compare(base: dict, arm: dict, suites: list[str]) -> list[dict]:
    """Per suite and pooled: cases, passes of each side, wins and losses of the arm, exact p and interval."""
    rows = []
    for suite in [*suites, "pooled"]:
        keys = [k for k in base if k in arm and (suite == "pooled" or k[0] == suite)]
        wins = sum(arm[k] and not base[k] for k in keys)
        losses = sum(base[k] and not arm[k] for k in keys)
        test = paired(len(keys), wins, losses)
        rows.append({"suite": suite, "cases": len(keys), "base": sum(base[k] for k in keys),
                     "arm": sum(arm[k] for k in keys), "wins": wins, "losses": losses,
                     "p_two_sided": round(test.p_two_sided, 4), "ci95": [round(test.low, 3), round(test.high, 3)]})
    return rows


def partial_credit(base: Run, arm: Run) -> list[dict]:
    """Per suite: the mean grade (partial credit) of each side and the cases the arm graded higher and lower,
    with the exact two-sided sign test: arguments come right before whole cases pass."""
    return [{"suite": c.suite, "base": round(c.grade_a, 3), "arm": round(c.grade_b, 3), "up": c.grade_up,
             "down": c.grade_down, "p_two_sided": round(c.grade_p, 4)} for c in report_compare(base, arm)[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", type=Path,
                        help="state folder of a finished round (the adapter it started from active)")
    parser.add_argument("--arm", action="append", required=True, help="NAME=STAGE[:KEY=VALUE,...]")
    parser.add_argument("--name", required=True, help="names the JSON and the arms' folder")
    parser.add_argument("--suites", nargs="+", default=["arithmetic", "tools", "rag"])
    parser.add_argument("--prompts", type=int, default=16, help="the round's prompts per suite")
    parser.add_argument("--gate-limit", type=int, default=32, help="the round's gate cases per suite")
    parser.add_argument("--out", type=Path, help="arms' folder (default: beside the state, ablate-<name>)")
    args = parser.parse_args()
    source = args.state.resolve()
    current = json.loads((round_dir(source) / "rollouts.done").read_text())["adapter"]  # what the round started from
    active = Registry(source / "adapters").active
    if active != current:  # each arm's resumed round would train over it and compare it with itself
        raise SystemExit(f"{source} has {active or 'the base model'} active; the arms must start from "
                         f"{current or 'the base model'}, as its last round did. Copy the folder and in the copy "
                         "run `STROP_STATE_DIR=COPY strop adapters rollback` until it is, then ablate the copy.")
    out = (args.out or source.parent / f"ablate-{args.name}").resolve()
    sized = {"STROP_IMPROVE__SUITES": json.dumps(args.suites), "STROP_IMPROVE__PROMPTS_PER_SUITE": str(args.prompts),
             "STROP_IMPROVE__GATE_LIMIT": str(args.gate_limit)}
    base_gate = gate_runs(source, "current")
    base_test_id = test_run(source, args.suites, current, sized)
    strop(source, ["serve", "stop"], sized)
    base = {"gate": passes(source, base_gate), "test": passes(source, [base_test_id])}
    figures = {"state": str(source), "suites": args.suites, "base": {"gate": base_gate, "test": base_test_id},
               "arms": {}}
    for name, stage, env in map(parse_arm, args.arm):
        state = out / name / "state"
        prepare(source, state, stage)
        marker = state.parent / "began"  # when the arm's own stages began: a reused arm keeps its minutes
        if not (round_dir(state) / "promote.done").exists():  # else `strop improve` would start the next round
            marker.write_text(str(time.time()))
            strop(state, ["improve"], {**sized, **env})
        began = float(marker.read_text()) if stage != "as-run" and marker.exists() else None
        rnd = round_dir(state)
        minutes = Round(rnd).stage_minutes(began)  # of the stages this arm ran (all of them for as-run)
        adapter = json.loads((rnd / "train.done").read_text())["adapter"]
        gate = gate_runs(state, "candidate")
        test_id = test_run(state, args.suites, adapter, {**sized, **env})
        strop(state, ["serve", "stop"], sized)
        pairs = json.loads((rnd / "pairs.done").read_text())
        figures["arms"][name] = {
            "stage": stage, "settings": env, "adapter": adapter, "pairs": pairs["pairs"], "pair_counts": pairs,
            "rollouts": json.loads((rnd / "rollouts.done").read_text()), "stage_minutes": minutes,
            "promoted": json.loads((rnd / "gate.done").read_text()).get("promote"),
            "runs": {"gate": gate, "test": test_id},
            **{split: compare(base[split], passes(state, runs), args.suites)
               for split, runs in (("gate", gate), ("test", [test_id]))},
            "test_grades": partial_credit(RunStore(source / "eval").open(base_test_id),
                                          RunStore(state / "eval").open(test_id))}
        show(name, figures["arms"][name])
    path = REPO / "bench" / "results" / f"ablate-{args.name}.json"
    path.write_text(json.dumps({"machine": machine(), **figures}, indent=1))
    console.print(f"wrote {path}")


def show(name: str, arm: dict) -> None:
    table = Table(title=f"{name}: {arm['stage']} {arm['settings'] or ''}, {arm['pairs']} pairs, "
                        f"promoted {arm['promoted']}")
    for column in ("split", "suite", "cases", "base", "arm", "won/lost", "p", "95% CI", "grade, up/down (p)"):
        table.add_column(column)
    for split in ("gate", "test"):
        for r in arm[split]:
            grade = next((g for g in arm.get("test_grades", ()) if split == "test" and g["suite"] == r["suite"]), None)
            table.add_row(split, *cells(r, grade))
    console.print(table)


def cells(row: dict, grade: dict | None) -> list[str]:
    """A row of :func:`compare` as table cells: suite, cases, each side's passes, won/lost, p, interval, and the
    partial credit of :func:`partial_credit` where there is one."""
    low, high = row["ci95"]
    return [row["suite"], str(row["cases"]), str(row["base"]), str(row["arm"]), f"{row['wins']}/{row['losses']}",
            p_cell(row["p_two_sided"]), f"{low:+.3f} .. {high:+.3f}",
            f"{grade['base']:.2f} → {grade['arm']:.2f}, {grade['up']}/{grade['down']} "
            f"({p_cell(grade['p_two_sided'])})" if grade else ""]


if __name__ == "__main__":
    main()

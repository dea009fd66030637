"""Does the loop make the agent better? Rounds from the base model in a state folder of their own, each gated by
the significance rule, then the test split (which no round and no gate reads) of the base model and of the
adapter active at the end, compared case by case with the exact paired test.

    .venv/bin/python bench/efficacy.py --state /tmp/efficacy --rounds 3 --prompts 32
    .venv/bin/python bench/efficacy.py --state /tmp/efficacy --report    # the tables again, from saved runs

The rest of the round is configured as usual (`[improve]`, `[critic]`, `[train]`, or STROP_* variables, e.g.
STROP_CRITIC__USE_GOLD=false for a run on AI feedback alone). Rounds already finished in the folder count:
running it again resumes. Writes bench/results/efficacy.json (or --out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from strop.config import Settings, load_settings, machine
from strop.scenarios.report import compare
from strop.scenarios.runs import RunStore
from strop.scenarios.stats import p_cell, p_text
from strop.serving.adapters import Registry
from strop.training.loop import Round

RESULTS = Path(__file__).parent / "results" / "efficacy.json"
console = Console(width=None if Console().is_terminal else 150)  # a saved log keeps whole rows


def run_rounds(settings: Settings, rounds: int) -> None:
    """The base model's test split first (in merged mode only the current policy is served), then the rounds
    still missing, then the active adapter's test split."""
    from strop.serving.endpoint import connect
    from strop.training.display import RoundDisplay, show_round
    from strop.training.history import evaluate_test
    from strop.training.loop import Improver

    endpoint = connect(settings)
    if not finished_rounds(settings) and Registry(settings.adapters_dir).active is None:
        evaluate_test(settings, endpoint, None)
    display = RoundDisplay()
    improver = Improver(settings, endpoint, display)
    with improver.locked():
        while len(finished_rounds(settings)) < rounds:
            report = improver.run_round()
            display.stage("report")
            show_round(report)
    active = Registry(settings.adapters_dir).active
    if active is not None:
        evaluate_test(settings, connect(settings), active)


def finished_rounds(settings: Settings) -> list[Round]:
    return [rnd for rnd in map(Round, sorted(settings.improve_dir.glob("round-*"))) if rnd.finished]


def round_rows(settings: Settings) -> list[dict[str, Any]]:
    """Per round: pairs, the candidate, its gate result per suite and pooled, the decision, and the stage times."""
    rows = []
    for rnd in finished_rounds(settings):
        done = {p.stem: json.loads(p.read_text()) for p in rnd.dir.glob("*.done")}
        gate = done.get("gate", {})
        minutes = rnd.stage_minutes()
        rows.append({
            "round": rnd.number, "pairs": done.get("pairs", {}).get("pairs"),
            "drawn": done.get("rollouts", {}).get("drawn"), "informative": done.get("rollouts", {}).get("informative"),
            "candidate": done.get("train", {}).get("adapter"), "promoted": done.get("promote", {}).get("promoted"),
            "reason": gate.get("reason") or gate.get("skipped") or gate.get("stop"),
            "gate": gate.get("suites", []), "wins": gate.get("wins"), "losses": gate.get("losses"), "p": gate.get("p"),
            "minutes": round(sum(minutes.values()), 1) if minutes else None, "stage_minutes": minutes})
    return rows


def test_comparison(settings: Settings) -> dict[str, Any] | None:
    """The active adapter against the base model on the test split, per suite (exact paired test)."""
    active = Registry(settings.adapters_dir).active
    runs = [r for r in RunStore(settings.eval_dir).list() if r.finished and r.options.split == "test"]
    base = next((r for r in reversed(runs) if r.options.adapter is None), None)
    final = next((r for r in reversed(runs) if r.options.adapter == active), None) if active else None
    if base is None or final is None:
        return None
    comparisons, _ = compare(base, final)
    return {"base_run": base.id, "active_run": final.id, "active": active,
            "suites": [{"suite": c.suite, "cases": c.cases, "base": c.rate_a, "active": c.rate_b, "diff": c.diff,
                        "ci": [c.low, c.high], "p_two_sided": c.p, "wins": c.wins, "losses": c.losses,
                        "grade": [c.grade_a, c.grade_b], "graded_up": c.grade_up, "graded_down": c.grade_down,
                        "grade_p_two_sided": c.grade_p}
                       for c in comparisons]}


def show(rows: list[dict[str, Any]], test: dict[str, Any] | None) -> None:
    table = Table(title="rounds: gate cases (each round against the adapter active before it)")
    for column in ("round", "pairs", "candidate", "suite", "cases", "before", "after", "won/lost", "95% CI",
                   "outcome", "minutes"):
        table.add_column(column)
    for row in rows:
        for i, s in enumerate(row["gate"] or [{}]):
            first = i == 0
            table.add_row(str(row["round"]) if first else "", str(row["pairs"]) if first else "",
                          (row["candidate"] or "-") if first else "", s.get("suite", "-"), str(s.get("cases", "")),
                          f"{s['current']:.1%}" if s else "", f"{s['candidate']:.1%}" if s else "",
                          f"{s['wins']}/{s['losses']}" if s else "",
                          f"{s['ci'][0]:+.1%}..{s['ci'][1]:+.1%}" if s else "",
                          (f"promoted {row['promoted']}" if row["promoted"] else "kept") if first else "",
                          str(row["minutes"]) if first else "")
        table.add_row("", "", "", "pooled", "", "", "", f"{row['wins']}/{row['losses']}" if row["wins"] is not None
                      else "", f"one-sided {p_text(row['p'])}" if row["p"] is not None else "", row["reason"] or "", "")
    console.print(table)
    if test is None:
        console.print("[yellow]no test-split comparison: no adapter was promoted, or the base model's or the "
                      "active adapter's test run is missing (run without --report)[/]")
        return
    held = Table(title=f"test split, never selected on: base vs {test['active']}")
    for column in ("suite", "cases", "base", test["active"], "diff", "exact 95% CI", "won/lost", "two-sided p",
                   "grade", "graded up/down (p)"):
        held.add_column(column)
    for s in test["suites"]:
        grade = (f"{s['grade'][0]:.2f} → {s['grade'][1]:.2f}", f"{s['graded_up']}/{s['graded_down']} "
                 f"({p_cell(s['grade_p_two_sided'])})") if "grade" in s else ("", "")  # older results have none
        held.add_row(s["suite"], str(s["cases"]), f"{s['base']:.1%}", f"{s['active']:.1%}", f"{s['diff']:+.1%}",
                     f"{s['ci'][0]:+.1%}..{s['ci'][1]:+.1%}", f"{s['wins']}/{s['losses']}", p_cell(s["p_two_sided"]),
                     *grade)
    console.print(held)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True, help="State folder of the experiment (its own).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, help="improve.prompts_per_suite (default: as configured).")
    parser.add_argument("--report", action="store_true", help="Only the tables, from what is saved.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = load_settings(state_dir=args.state)
    if args.prompts is not None:
        settings.improve.prompts_per_suite = args.prompts
    if not args.report:
        run_rounds(settings, args.rounds)
    rows, test = round_rows(settings), test_comparison(settings)
    show(rows, test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"state": str(args.state), "machine": machine(),
                                    "improve": settings.improve.model_dump(),
                                    "critic": settings.critic.model_dump(mode="json"),
                                    "train": settings.train.model_dump(), "rounds": rows, "test": test}, indent=2))


if __name__ == "__main__":
    main()

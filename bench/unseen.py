"""An adapter against the base model (or another adapter) on samples of the suites' tasks that no suite holds.

A built-in suite keeps a sample of its data file (tools 120 of BFCL's 200 calls, rag 120 of 1000 SQuAD questions,
arithmetic 30 of each operation's 400 problems). The lines its sample left out become a suite of their own
(`bench/critic_unseen.py`'s ``unseen_suite``), about ``--sample`` lines a suite, shared evenly among its data
entries. No round draws a prompt from them and no gate reads them, so they test what a round learned on the task
rather than on the suite's sample. Every case runs once, greedily, with the base model (``--baseline``) and with
the adapter (default: the active one) in STATE; the two are compared case by case per suite and pooled (wins and
losses, the exact two-sided p and 95% interval of the difference) and by the graders' partial credit (cases graded
higher and lower, the exact sign test). Writes bench/results/unseen.json (``--out``).

    .venv/bin/python bench/unseen.py /tmp/efficacy --out bench/results/unseen-efficacy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from ablate import cells, compare, partial_credit, passes, strop
from critic_unseen import unseen_suite
from rich.console import Console
from rich.table import Table

from strop.config import machine
from strop.scenarios.runs import RunStore
from strop.scenarios.suite import resolve
from strop.serving.adapters import Registry

RESULTS = Path(__file__).parent / "results"
console = Console(stderr=True)


def entries(suite: str) -> int:
    """How many data entries the built-in suite samples lines from."""
    return len(yaml.safe_load(resolve(suite).read_text(encoding="utf-8"))["data"])


def run(state: Path, suites: list[Path], adapter: str) -> str:
    """The id of a run of every case of ``suites`` with ``adapter`` ('base' for none)."""
    before = {r.id for r in RunStore(state / "eval").list()}
    strop(state, ["eval", "run", *map(str, suites), "--split", "all", "--adapter", adapter, "--concurrency", "16"],
          {})
    made = [r.id for r in RunStore(state / "eval").list() if r.id not in before]
    if not made:
        raise SystemExit(f"`strop eval` with {adapter} made no run in {state / 'eval'}")
    return made[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state", type=Path, help="state folder holding the adapter")
    parser.add_argument("--adapter", help="the adapter compared with the baseline (default: the active one)")
    parser.add_argument("--baseline", default="base", help="what it is compared with: base, or an adapter")
    parser.add_argument("--suites", nargs="+", default=["arithmetic", "tools", "rag"])
    parser.add_argument("--sample", type=int, default=120, help="unseen lines a suite (tools has 80)")
    parser.add_argument("--out", type=Path, default=RESULTS / "unseen.json")
    args = parser.parse_args()
    state = args.state.resolve()
    adapter = args.adapter or Registry(state / "adapters").active
    if not adapter:
        raise SystemExit(f"{state} has no active adapter: name one with --adapter")
    files = [unseen_suite(state / "unseen" / name, -(-args.sample // entries(name)), name) for name in args.suites]
    runs = {side: run(state, files, side) for side in (args.baseline, adapter)}
    strop(state, ["serve", "stop"], {})
    base, arm = (passes(state, [runs[side]]) for side in (args.baseline, adapter))
    store = RunStore(state / "eval")
    figures = {"machine": machine(), "state": str(state), "adapter": adapter, "baseline": args.baseline,
               "suites": args.suites, "sample": args.sample, "runs": runs, "cases": compare(base, arm, args.suites),
               "grades": partial_credit(store.open(runs[args.baseline]), store.open(runs[adapter]))}
    args.out.write_text(json.dumps(figures, indent=1))
    show(figures)
    console.print(f"wrote {args.out}")


def show(figures: dict) -> None:
    table = Table(title=f"{figures['adapter']} against {figures['baseline']} on unseen cases of the suites' tasks")
    for column in ("suite", "cases", figures["baseline"], figures["adapter"], "won/lost", "p", "95% CI",
                   "grade, up/down (p)"):
        table.add_column(column)
    for r in figures["cases"]:
        table.add_row(*cells(r, next((g for g in figures["grades"] if g["suite"] == r["suite"]), None)))
    console.print(table)


if __name__ == "__main__":
    main()

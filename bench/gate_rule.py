"""How often the gate's rule promotes: an equivalent candidate (false promotions) and a real +15-point gain
(power), 1,000 simulated rounds each, beside the previous rule (a pooled point gain of 2% and no suite down
more than 5%) on the very same simulated rounds of an equivalent candidate.

    .venv/bin/python bench/gate_rule.py      # prints a table, writes bench/results/gate_rule.json
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strop.training.gate import _simulated_suite, simulated_figures

RESULTS = Path(__file__).parent / "results" / "gate_rule.json"


def previous_rule_rate(flip: float | None, rounds: int = 1000, seed: int = 0) -> float:
    """The previous rule's promotion rate on simulated equivalent candidates (8-60 cases over two suites)."""
    rng, promoted = random.Random(seed), 0
    for _ in range(rounds):
        total = rng.randint(8, 60)
        results = [_simulated_suite(rng, f"s{i}", total // 2 + (i < total % 2), 0.0, flip) for i in range(2)]
        gain = sum(r.diff * r.cases for r in results) / sum(r.cases for r in results)
        promoted += gain >= 0.02 and not any(r.diff < -0.05 for r in results)
    return promoted / rounds


def main() -> None:
    figures = simulated_figures()
    previous = {"flip 0.3": previous_rule_rate(0.3), "every case redrawn": previous_rule_rate(None)}
    table = Table(title="gate rule, 1,000 simulated rounds per row")
    for column in ("candidate", "gate cases", "flip", "promoted"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for f in figures:
        cases = f"{f['cases'][0]}-{f['cases'][1]}" if f["cases"][0] != f["cases"][1] else str(f["cases"][0])
        table.add_row(f"gain {f['gain']:+.0%}", cases, "redrawn" if f["flip"] is None else f"{f['flip']:.0%}",
                      f"{f['promotion_rate']:.1%}")
    for label, rate in previous.items():
        table.add_row("gain +0% (previous rule)", "8-60", label, f"{rate:.1%}")
    Console().print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rule": figures, "previous_rule": previous}, indent=2))


if __name__ == "__main__":
    main()

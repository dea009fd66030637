"""The gate: the candidate adapter and the active one evaluated on the gate split of ``improve.suites``,
and the rule that decides whether the candidate is promoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strop.config import Settings
from strop.files import write_atomic
from strop.scenarios.report import compare
from strop.scenarios.runner import complete_run, start_run
from strop.scenarios.runs import EvalOptions, Run, RunStore
from strop.scenarios.suite import Suite
from strop.serving.endpoint import Endpoint


class Gate:
    """The gate's evaluation runs for one round, resumed when a kill interrupted them."""

    def __init__(self, settings: Settings, endpoint: Endpoint, suites: list[Suite]):
        self.settings, self.endpoint, self.suites = settings, endpoint, suites
        self.store = RunStore(settings.eval_dir)
        self.cases = {s.name: s.select("gate", settings.improve.gate_limit) for s in suites}

    def run(self, round_dir: Path, role: str, adapter: str | None, display) -> Run:
        """The evaluation of one side (``candidate`` or ``current``), resumed or reused where it can be."""
        marker = round_dir / f"gate-{role}.run"
        if marker.exists():
            run = self.store.open(marker.read_text().strip())
        elif role == "current" and (earlier := self.earlier_run(adapter)):
            run = earlier
            write_atomic(marker, run.id)
        else:
            options = EvalOptions(adapter=adapter, concurrency=self.settings.improve.concurrency, split="gate",
                                  limit=self.settings.improve.gate_limit)
            run = start_run(self.store, self.endpoint.model, options, self.suites, self.cases)
            write_atomic(marker, run.id)
        if not run.finished:
            with display.gate(run, self.cases) as advance:
                complete_run(self.settings, self.endpoint, run, self.suites, self.cases, on_episode=advance)
        return run

    def earlier_run(self, adapter: str | None) -> Run | None:
        """A finished, error-free evaluation of ``adapter`` on exactly these cases, to reuse instead of repeating.

        Gate runs are greedy, so the same adapter answers the same cases the same way: the candidate's
        run of the round that promoted it, or a baseline `strop eval`, stands for the current side.
        """
        wanted = {(suite, case.id) for suite, listed in self.cases.items() for case in listed}
        for run in reversed(self.store.list()):
            if not (run.finished and run.options.adapter == adapter and run.options.repeat == 1
                    and run.meta.get("model") == self.endpoint.model):
                continue
            records = run.records()
            if {(r["suite"], r["case"]) for r in records} == wanted and all(r["status"] != "error" for r in records):
                return run
        return None


def decide(current: Run, candidate: Run, max_drop: float, min_gain: float) -> dict[str, Any]:
    """Promote only when no gate suite got worse beyond noise and the pooled pass rate rose by ``min_gain``."""
    comparisons, _ = compare(current, candidate)
    if not comparisons:
        return {"promote": False, "reason": "the gate runs share no cases", "suites": []}
    suites = [{"suite": c.suite, "current": c.rate_a, "candidate": c.rate_b, "diff": c.diff, "ci": [c.low, c.high],
               "cases": c.cases} for c in comparisons]
    worse = [c.suite for c in comparisons if c.diff < -max_drop or c.high < 0]
    cases = sum(c.cases for c in comparisons)
    gain = sum(c.diff * c.cases for c in comparisons) / cases
    if worse:
        reason = f"worse on {', '.join(worse)} (beyond a drop of {max_drop:.0%} or its 95% CI below zero)"
    elif gain < min_gain:
        reason = f"pooled gain {gain:+.1%} is below improve.min_gain {min_gain:.0%}"
    else:
        reason = f"pooled gain {gain:+.1%}, no suite worse beyond noise"
    return {"promote": not worse and gain >= min_gain, "reason": reason, "gain": gain, "suites": suites}

"""The gate: the candidate adapter and the active one evaluated on the gate split of ``improve.suites``,
and the rule that decides whether the candidate is promoted.

The rule (``decide``): promote only when

* every episode of both sides finished (one that errored or timed out is not a failed case: the gate runs
  it again, up to ``improve.gate_retries`` times, and gives no verdict while either side still has one);
* the pooled paired gain over all gate cases is significant: the exact one-sided McNemar (sign) test on
  the cases that changed gives p < ``improve.alpha``, and the gain is at least ``improve.min_gain``;
* no suite is worse: neither its own exact one-sided test (candidate worse) gives p < ``improve.alpha``,
  nor its pass rate dropped by more than ``improve.max_drop``.

``simulate`` replays the rule on simulated rounds, for its false promotion rate and its power
(``bench/gate_rule.py`` prints both beside the previous rule's).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strop.config import Settings
from strop.files import write_atomic
from strop.scenarios.report import compare
from strop.scenarios.runner import complete_run, start_run
from strop.scenarios.runs import EvalOptions, Run, RunStore
from strop.scenarios.stats import p_text, paired
from strop.scenarios.suite import Case, Suite, fingerprint
from strop.serving.endpoint import Endpoint
from strop.serving.policy import OnDemand

UNFINISHED = ("error", "timeout")


Serving = Callable[[], contextlib.AbstractContextManager[Endpoint]]


class Gate:
    """The gate's evaluation runs for one round, resumed when a kill interrupted them."""

    def __init__(self, settings: Settings, endpoint: Endpoint, suites: list[Suite],
                 earlier: list[dict[str, Any]] = ()):
        self.settings, self.endpoint, self.suites = settings, endpoint, suites
        self.earlier = earlier  # episode records (the round's rollouts) that say which cases run long
        self.store = RunStore(settings.eval_dir)
        self.cases = {s.name: s.select("gate", settings.improve.gate_limit) for s in suites}

    def run(self, round_dir: Path, role: str, adapter: str | None, display, serving: Serving | None = None) -> Run:
        """The evaluation of one side (``candidate`` or ``current``), resumed or reused where it can be; episodes
        that errored or timed out are run again (``improve.gate_retries``) and the latest try of each counts.

        ``serving`` gives the endpoint that answers (default: the gate's), entered only when episodes are left to
        run (a server beside takes seconds to start) and left when the side is done."""
        with contextlib.ExitStack() as stack:
            endpoint = OnDemand(stack, serving or (lambda: contextlib.nullcontext(self.endpoint)))
            run = self.first_run(round_dir, role, adapter, display, endpoint)
            for attempt in range(1, self.settings.improve.gate_retries + 1):
                again = unfinished_cases(run, self.cases)
                if not any(again.values()):
                    break
                retry = self.evaluate(round_dir / f"gate-{role}-retry{attempt}.run", adapter, again, display, endpoint)
                run = Retried(run, retry)
        return run

    def first_run(self, round_dir: Path, role: str, adapter: str | None, display,
                  endpoint: Callable[[], Endpoint]) -> Run:
        marker = round_dir / f"gate-{role}.run"
        if not marker.exists() and role == "current" and (earlier := self.earlier_run(adapter)):
            write_atomic(marker, earlier.id)
        return self.evaluate(marker, adapter, self.cases, display, endpoint)

    def evaluate(self, marker: Path, adapter: str | None, cases: dict[str, list[Case]], display,
                 endpoint: Callable[[], Endpoint]) -> Run:
        """The run named in ``marker`` (started, and the marker written, when there is none), run to its end."""
        if marker.exists():
            run = self.store.open(marker.read_text().strip())
        else:
            options = EvalOptions(adapter=adapter, concurrency=self.settings.improve.concurrency, split="gate",
                                  limit=self.settings.improve.gate_limit)
            run = start_run(self.store, self.endpoint.model, options, self.suites, cases)
            write_atomic(marker, run.id)
        if not run.finished:
            with display.gate(run, cases) as advance:
                complete_run(self.settings, endpoint(), run, self.suites, cases, on_episode=advance,
                             earlier=self.earlier)
        return run

    def earlier_run(self, adapter: str | None) -> Run | None:
        """A finished evaluation of ``adapter`` on exactly these cases, with the same suite content and sampling
        and every episode finished, to reuse instead of repeating.

        Gate runs are greedy, so the same adapter answers the same cases the same way: the candidate's
        run of the round that promoted it, or a baseline `strop eval`, stands for the current side. A run
        with an errored or timed-out episode is never reused (its cases would count as failures).
        """
        wanted = {(suite, case.id) for suite, listed in self.cases.items() for case in listed}
        content = {s.name: fingerprint(s, self.cases[s.name]) for s in self.suites}
        for run in reversed(self.store.list()):
            if not (run.finished and run.options.adapter == adapter and run.options.repeat == 1
                    and run.options.split == "gate" and run.meta.get("model") == self.endpoint.model):
                continue
            if not all(self.same_suite(run, s, content[s.name]) for s in self.suites):
                continue
            records = run.records()
            if {(r["suite"], r["case"]) for r in records} == wanted and all(r["status"] not in UNFINISHED
                                                                            for r in records):
                return run
        return None

    @staticmethod
    def same_suite(run: Run, suite: Suite, content: str) -> bool:
        """``run`` evaluated ``suite`` with the same content (cases, graders, defaults) and sampling."""
        described = run.meta["suites"].get(suite.name, {})
        return described.get("content") == content and described.get("sampling") == suite.defaults.sampling.model_dump()


class Retried(Run):
    """A gate run with some episodes run again: the latest try of each (suite, case, repeat) counts."""

    def __init__(self, first: Run, retry: Run):
        super().__init__(first.dir, first.meta)
        self.first, self.retry = first, retry

    def records(self) -> list[dict[str, Any]]:
        latest = {(r["suite"], r["case"], r.get("repeat", 0)): r for r in self.first.records()}
        latest |= {(r["suite"], r["case"], r.get("repeat", 0)): r for r in self.retry.records()}
        return list(latest.values())

    @property
    def ids(self) -> list[str]:
        return [*(self.first.ids if isinstance(self.first, Retried) else [self.first.id]), self.retry.id]


def unfinished_cases(run: Run, cases: dict[str, list[Case]]) -> dict[str, list[Case]]:
    """The cases of ``cases`` with an episode in ``run`` that errored or timed out."""
    failed = {(r["suite"], r["case"]) for r in run.records() if r.get("status") in UNFINISHED}
    return {suite: [c for c in listed if (suite, c.id) in failed] for suite, listed in cases.items()}


def run_ids(run: Run) -> list[str]:
    """Every evaluation run a gate side consists of (the first, then its re-runs)."""
    return run.ids if isinstance(run, Retried) else [run.id]


# -- the rule --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SuiteResult:
    """One gate suite's paired outcome: cases in both runs, cases the candidate alone passes (wins) and the
    active adapter alone passes (losses), and the pass rates."""

    suite: str
    cases: int
    wins: int
    losses: int
    current: float
    candidate: float

    @property
    def diff(self) -> float:
        return self.candidate - self.current


def decide(current: Run, candidate: Run, max_drop: float, min_gain: float, alpha: float = 0.05) -> dict[str, Any]:
    """The gate's verdict on two runs (see the module docstring); a negative ``min_gain`` asks only that no
    suite got worse (the smoke check after a promotion)."""
    unfinished = {side: [f"{r['suite']}/{r['case']}: {r['status']}: {r.get('error')}" for r in run.records()
                         if r.get("status") in UNFINISHED] for side, run in (("candidate", candidate),
                                                                            ("current", current))}
    if any(unfinished.values()):
        counts = ", ".join(f"{len(v)} of the {k} side" for k, v in unfinished.items() if v)
        first = next(v[0] for v in unfinished.values() if v)
        return {"promote": False, "verdict": None, "unfinished": unfinished, "suites": [],
                "reason": f"no verdict: episodes still errored or timed out after re-runs ({counts}; e.g. {first})"}
    comparisons, _ = compare(current, candidate)
    results = [SuiteResult(c.suite, c.cases, c.wins, c.losses, c.rate_a, c.rate_b) for c in comparisons]
    return verdict(results, max_drop, min_gain, alpha)


def verdict(results: list[SuiteResult], max_drop: float, min_gain: float, alpha: float = 0.05) -> dict[str, Any]:
    """The rule on per-suite paired counts (pure: the simulation replays it)."""
    if not results:
        return {"promote": False, "verdict": None, "reason": "the gate runs share no cases", "suites": []}
    suites, worse = [], []
    for r in results:
        test = paired(r.cases, r.wins, r.losses)
        suites.append({"suite": r.suite, "current": r.current, "candidate": r.candidate, "diff": r.diff,
                       "ci": [test.low, test.high], "p_worse": test.p_worse, "wins": r.wins, "losses": r.losses,
                       "cases": r.cases})
        if r.diff < -max_drop or test.p_worse < alpha:
            worse.append(r.suite)
    cases = sum(r.cases for r in results)
    gain = sum(r.diff * r.cases for r in results) / cases
    pooled = paired(cases, sum(r.wins for r in results), sum(r.losses for r in results))
    counts = f"{pooled.wins} won / {pooled.losses} lost of {cases} cases, exact {p_text(pooled.p_better)}"
    significant = min_gain < 0 or pooled.p_better < alpha
    if worse:
        reason = f"worse on {', '.join(worse)} (a drop beyond {max_drop:.0%}, or its exact test p < {alpha:g})"
    elif not significant:
        reason = f"pooled gain {gain:+.1%} is not significant ({counts}; needs p < improve.alpha {alpha:g})"
    elif gain < min_gain:
        reason = f"pooled gain {gain:+.1%} is below improve.min_gain {min_gain:.0%} ({counts})"
    else:
        reason = f"pooled gain {gain:+.1%} ({counts}), no suite worse"
    promote = not worse and significant and gain >= min_gain
    return {"promote": promote, "verdict": "promote" if promote else "keep", "reason": reason, "gain": gain,
            "p": pooled.p_better, "wins": pooled.wins, "losses": pooled.losses, "ci": [pooled.low, pooled.high],
            "suites": suites}


# -- simulation ------------------------------------------------------------------------------

def simulate(rounds: int = 1000, cases: tuple[int, int] = (8, 60), gain: float = 0.0, flip: float | None = 0.3,
             suites: int = 2, alpha: float = 0.05, min_gain: float = 0.02, max_drop: float = 0.05,
             seed: int = 0) -> dict[str, Any]:
    """The share of simulated rounds the rule promotes.

    Each round has a number of gate cases drawn from ``cases`` (inclusive), split evenly over ``suites``.
    With ``flip`` set, each case changes its result with probability ``flip`` and a changed case is a win
    with probability 1/2 + gain / (2 * flip) (the expected gain is ``gain``). With ``flip=None`` both sides
    draw every case independently from its own pass probability q (uniform on [0, 1 - gain]; the
    candidate's is q + ``gain``): about a third of the cases flip, the noisiest case. ``gain=0`` measures the
    false promotion rate of an equivalent candidate, a positive gain the power.
    """
    if flip is not None and not 0 < gain <= flip and gain != 0:
        raise ValueError(f"a gain of {gain} needs at least that share of cases to flip (flip={flip})")
    rng = random.Random(seed)
    promoted, flipped = 0, 0
    for _ in range(rounds):
        total = rng.randint(*cases)
        results = []
        for index in range(suites):
            n = total // suites + (index < total % suites)
            if n:
                results.append(_simulated_suite(rng, f"s{index}", n, gain, flip))
                flipped += results[-1].wins + results[-1].losses
        promoted += verdict(results, max_drop, min_gain, alpha)["promote"]
    return {"rounds": rounds, "cases": list(cases), "gain": gain, "flip": flip, "suites": suites, "alpha": alpha,
            "min_gain": min_gain, "max_drop": max_drop, "seed": seed, "promoted": promoted,
            "promotion_rate": promoted / rounds, "mean_cases_flipped": flipped / rounds}


def _simulated_suite(rng: random.Random, name: str, n: int, gain: float, flip: float | None) -> SuiteResult:
    wins = losses = passed = 0
    for _case in range(n):
        if flip is None:
            q = rng.uniform(0.0, 1.0 - gain)
            before, after = rng.random() < q, rng.random() < q + gain
        else:
            before = rng.random() < 0.5
            after = before
            if rng.random() < flip:
                after = rng.random() < 0.5 + gain / (2 * flip)  # a win: the candidate passes, the active fails
                before = not after
        wins, losses, passed = wins + (after and not before), losses + (before and not after), passed + before
    return SuiteResult(name, n, wins, losses, passed / n, (passed + wins - losses) / n)


def simulated_figures(rounds: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """The figures the README reports: false promotions of an equivalent candidate, and the power for a real
    +15-point gain on 60 gate cases."""
    return [simulate(rounds, (8, 60), 0.0, seed=seed), simulate(rounds, (8, 60), 0.0, flip=None, seed=seed),
            simulate(rounds, (60, 60), 0.15, seed=seed), simulate(rounds, (60, 60), 0.15, flip=0.2, seed=seed),
            simulate(rounds, (60, 60), 0.15, flip=None, seed=seed)]


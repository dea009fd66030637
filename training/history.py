"""What self-improvement has done: one row per round (trigger, pairs, gate, outcome, rollback and why), the active
adapter's lineage, its pass rate on the held-out ``test`` split beside the gate's, and a chart of pass rates per
suite across rounds.

Every round selects on the gate cases, so the gate's history overstates the gain of the adapter it chose. The
``test`` split of the same suites is read by no round and no gate: ``evaluate_test`` runs it for one adapter
(after a promotion, or when asked with ``strop history --test``) and reuses a clean run (every episode ran) of that
adapter on the same cases, so it costs one evaluation per promoted adapter and never decides anything."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from strop.config import Settings
from strop.errors import StropError
from strop.serving.adapters import Registry
from strop.training.loop import STAGES, Round
from strop.training.retention import adapter_meta, read_json
from strop.training.watch import round_started, rounds, trigger_record


@dataclass
class RoundRow:
    number: int
    started_at: float
    trigger: str
    pairs: int | None
    adapter: str | None  # the candidate it trained
    current: str | None  # the active adapter its gate compared against
    suites: list[dict[str, Any]]  # the gate's per-suite rates (current, candidate, cases)
    outcome: str
    promoted: bool
    rolled_back: str | None  # why the promotion was undone

    def pooled(self, side: str) -> float | None:
        cases = sum(s["cases"] for s in self.suites)
        return sum(s[side] * s["cases"] for s in self.suites) / cases if cases else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gate_current": self.pooled("current"), "gate_candidate": self.pooled("candidate")}


@dataclass
class Held:
    """An adapter's pass rates on the held-out test split and on the gate (from the round that measured it)."""

    adapter: str | None
    test: float | None  # pooled pass rate over the test cases; None when not evaluated yet
    test_cases: int
    test_run: str | None
    gate: float | None  # pooled gate pass rate of the adapter in the latest round that evaluated it
    gate_round: int | None

    def line(self) -> str:
        name = self.adapter or "base model"
        gate = f"gate {self.gate:.1%} (round {self.gate_round})" if self.gate is not None else "gate -"
        if self.test is None:
            return f"{name}: {gate}; test split not evaluated yet (strop history --test)"
        return f"{name}: {gate}; test {self.test:.1%} on {self.test_cases} held-out cases (run {self.test_run})"


def held_out(settings: Settings, adapter: str | None, rows: list[RoundRow] | None = None) -> Held:
    """``adapter``'s test pass rate (from a finished run, nothing evaluated here) beside its gate pass rate."""
    rows = round_rows(settings) if rows is None else rows
    gate, gate_round = None, None
    for row in rows:  # the latest round whose gate evaluated the adapter, on either side
        if not row.suites:
            continue
        if adapter and row.adapter == adapter:
            gate, gate_round = row.pooled("candidate"), row.number
        elif row.current == adapter:
            gate, gate_round = row.pooled("current"), row.number
    run = latest_test_run(settings, adapter)
    if run is None:
        return Held(adapter, None, 0, None, gate, gate_round)
    records = run.records()
    rate = sum(bool(r["passed"]) for r in records) / len(records) if records else None
    return Held(adapter, rate, len({(r["suite"], r["case"]) for r in records}), run.id, gate, gate_round)


def latest_test_run(settings: Settings, adapter: str | None):
    """The newest finished, clean evaluation of ``adapter`` on the test split, or None."""
    from strop.scenarios.runs import RunStore

    for run in reversed(RunStore(settings.eval_dir).list()):
        if run.options.split == "test" and run.options.adapter == adapter and clean(run):
            return run
    return None


def clean(run) -> bool:
    """Finished with every episode run: an errored or timed-out episode says nothing of the adapter."""
    return run.finished and all(r.get("status") not in ("error", "timeout") for r in run.records())


def evaluate_test(settings: Settings, endpoint, adapter: str | None, on_episode=None):
    """``adapter`` evaluated on the test split of ``improve.suites`` (a clean run of the same adapter, model and
    cases is reused). Its result is reported, never used to select: no round or gate reads test runs."""
    from strop.scenarios.runner import complete_run, start_run
    from strop.scenarios.runs import EvalOptions, RunStore
    from strop.scenarios.suite import fingerprint, load_suite

    suites = [load_suite(name) for name in settings.improve.suites]
    cases = {s.name: s.select("test", settings.improve.gate_limit) for s in suites}  # sized like the gate
    store = RunStore(settings.eval_dir)
    for run in reversed(store.list()):
        if (clean(run) and run.options.split == "test" and run.options.adapter == adapter
                and run.meta.get("model") == endpoint.model
                and all(run.meta["suites"].get(s.name, {}).get("content") == fingerprint(s, cases[s.name])
                        for s in suites)):
            return run
    options = EvalOptions(adapter=adapter, concurrency=settings.improve.concurrency, split="test",
                          limit=settings.improve.gate_limit)
    run = start_run(store, endpoint.model, options, suites, cases)
    complete_run(settings, endpoint, run, suites, cases, on_episode=on_episode)
    return run


def round_rows(settings: Settings) -> list[RoundRow]:
    rollbacks = {e["previous"]: e["reason"] for e in Registry(settings.adapters_dir).history
                 if e["event"] == "rollback" and e["previous"]}
    return [_row(rnd, rollbacks) for rnd in rounds(settings)]


def _row(rnd: Round, rollbacks: dict[str, str]) -> RoundRow:
    done = {stage: rnd.result(stage) for stage in STAGES if rnd.done(stage)}
    adapter = done.get("train", {}).get("adapter")
    promoted = done.get("promote", {}).get("promoted")
    rolled_back = rollbacks.get(promoted) if promoted else None
    return RoundRow(rnd.number, round_started(rnd), trigger_record(rnd).get("trigger", "by hand"),
                    done.get("pairs", {}).get("pairs"), adapter, done.get("gate", {}).get("current"),
                    done.get("gate", {}).get("suites", []),
                    _outcome(done, rolled_back), bool(promoted), rolled_back)


def _outcome(done: dict[str, dict[str, Any]], rolled_back: str | None) -> str:
    if "promote" not in done:
        return f"in progress: {next(s for s in STAGES if s not in done)} is next"
    stopped = next((r["stop"] for r in done.values() if "stop" in r), None)
    if stopped:
        return f"stopped: {stopped}"
    promote = done["promote"]
    if not promote.get("promoted"):
        return f"kept the active adapter: {promote.get('reason', '')}"
    if rolled_back:
        return f"promoted {promote['promoted']}, rolled back: {rolled_back}"
    return f"promoted {promote['promoted']}: {promote.get('reason', '')}"


def lineage(settings: Settings, name: str | None) -> list[str]:
    """``name``, its parent, the parent's parent ... (pruned adapters included), ending with ``base``."""
    chain: list[str] = []
    while name and name not in chain:
        chain.append(name)
        name = adapter_meta(settings, name).get("parent")
    return [*chain, "base"]


def when(at: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(at)) if at else "-"


def history_chart(settings: Settings, rows: list[RoundRow], path: Path) -> Path:
    """A PNG of each gate suite's pass rate per round (candidate solid, the adapter it ran against dashed),
    smoke checks after promotions, and promotions and rollbacks marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = [r for r in rows if r.suites]
    if not gated:
        raise StropError(f"No round in {settings.improve_dir} has reached its gate yet: nothing to plot.",
                         fix="Run a round first (strop improve, or strop improve --once).")
    names = list(dict.fromkeys(s["suite"] for r in gated for s in r.suites))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 4), 4.5))
    for i, name in enumerate(names):
        points = [(r.number, s) for r in gated for s in r.suites if s["suite"] == name]
        xs = [x for x, _ in points]
        ax.plot(xs, [s["candidate"] for _, s in points], marker="o", color=colours(i), label=f"{name} candidate")
        ax.plot(xs, [s["current"] for _, s in points], linestyle="--", marker=".", color=colours(i), alpha=0.6,
                label=f"{name} active")
    _smoke_points(ax, settings, rows)
    for r in rows:
        if r.promoted:
            colour = "#d62728" if r.rolled_back else "#2ca02c"
            ax.axvline(r.number, color=colour, linestyle=":", linewidth=1.2)
            ax.annotate(f"{r.adapter} rolled back" if r.rolled_back else f"{r.adapter} promoted", (r.number, 1.02),
                        color=colour, fontsize=8, ha="center")
    ax.set_xticks([r.number for r in rows])
    ax.set_xlim(rows[0].number - 0.6, rows[-1].number + 0.6)  # room for the labels at the ends
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("round")
    ax.set_ylabel("pass rate (gate cases)")
    ax.set_title("strop improve: pass rate per suite across rounds")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _smoke_points(ax, settings: Settings, rows: list[RoundRow]) -> None:
    """The smoke suite's pass rate of each promoted adapter right after its promotion."""
    safety = read_json(settings.improve_dir / "watch" / "safety.json")
    points = [(r.number, s["candidate"]) for r in rows if r.promoted
              for s in safety.get(r.adapter, {}).get("smoke", {}).get("suites", [])]
    if points:
        ax.scatter(*zip(*points, strict=True), marker="D", color="black", zorder=3, label="smoke after promotion")

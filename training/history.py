"""What self-improvement has done: one row per round (trigger, pairs, gate, outcome, rollback and why), the active
adapter's lineage, and a chart of pass rates per suite across rounds."""

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
    suites: list[dict[str, Any]]  # the gate's per-suite rates (current, candidate, cases)
    outcome: str
    promoted: bool
    rolled_back: str | None  # why the promotion was undone

    def pooled(self, side: str) -> float | None:
        cases = sum(s["cases"] for s in self.suites)
        return sum(s[side] * s["cases"] for s in self.suites) / cases if cases else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gate_current": self.pooled("current"), "gate_candidate": self.pooled("candidate")}


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
                    done.get("pairs", {}).get("pairs"), adapter, done.get("gate", {}).get("suites", []),
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

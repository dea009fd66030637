"""`strop improve --once | --watch` (unattended rounds), `strop status` and `strop history`."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from strop.config import Settings, load_settings
from strop.console import err, examples, friendly_errors, out
from strop.errors import StropError
from strop.files import pid_alive
from strop.serving.adapters import Registry
from strop.training.history import lineage, round_rows, when
from strop.training.retention import read_json
from strop.training.watch import (
    Watcher,
    describe_policy,
    keep_watching,
    next_round_line,
    promotion,
    rounds,
    triggers,
)


def unattended(loop: bool) -> None:
    """Run rounds when their triggers fire: one look (cron, timers) or a look every watch.poll_s."""
    from strop.training.display import RoundDisplay, show_round

    settings = load_settings()
    err.print(f"[dim]policy {describe_policy(settings)}[/]", highlight=False)
    watcher = Watcher(settings, _improver, display=RoundDisplay(), say=_changes_only())

    def show(report: dict[str, Any]) -> None:
        if report.get("round"):
            show_round(report["round"])

    if loop:
        keep_watching(watcher, show, lambda line: err.print(line, style="yellow", markup=False, highlight=False))
        return
    report = watcher.once()
    show(report)
    if "round_failed" in report:  # the checks and retention ran; cron still hears that the round did not
        failed = report["round_failed"]
        raise StropError(f"Round {failed['round']} failed ({failed['times']} times so far): {failed['error']}",
                         fix="Correct the cause and run again to resume it, or end it with "
                             "`strop improve --abandon --reason '...'`.")


def _changes_only():
    """Print a line unless it repeats the one before (--watch says the same thing every look while waiting)."""
    last = [""]

    def say(line: str) -> None:
        if line != last[0]:
            err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(line)}", highlight=False)
        last[0] = line

    return say


def _improver(settings: Settings, display):
    from strop.serving.endpoint import connect
    from strop.training.loop import Improver

    with err.status("connecting to the model server") as status:
        endpoint = connect(settings, status.update)
    return Improver(settings, endpoint, display)


# -- status ----------------------------------------------------------------------------------------

def status_data(settings: Settings) -> dict[str, Any]:
    from strop.trajectories import TrajectoryStore

    registry = Registry(settings.adapters_dir)
    active = registry.active
    watch_dir = settings.improve_dir / "watch"
    safety = read_json(watch_dir / "safety.json")
    entry = promotion(registry, active) if active else None
    now = time.time()
    path = settings.trajectories_path
    store = TrajectoryStore(path if path.exists() else Path(":memory:"))  # looking never creates the store
    due = triggers(settings, store, now)
    pending = [r for r in rounds(settings)[-1:] if not r.finished]
    return {
        "active": active, "lineage": lineage(settings, active), "promoted_at": entry["at"] if entry else None,
        "safety": safety.get(active) if active else None, "policy": describe_policy(settings),
        "watcher": read_json(watch_dir / "heartbeat.json"), "round_running": _lock_held(settings),
        "triggers": {"new_runs": due.new_runs, "new_feedback_pairs": due.new_pairs, "fired": due.fired,
                     "wait_s": due.wait_s, "last_start": due.last_start},
        "next": (f"round {pending[0].number} is unfinished: the next look resumes it" if pending
                 else next_round_line(settings, due, now)),
        "rounds": [r.to_dict() for r in round_rows(settings)],
        "events": registry.history[-5:],
    }


@friendly_errors
def status(as_json: Annotated[bool, typer.Option("--json", help="Everything as one JSON object.")] = False,
           last: Annotated[int, typer.Option(min=1, help="Rounds shown in the history table.")] = 10) -> None:
    """The active adapter and its lineage, the watcher and its policy, the last and next round, trigger counters
    and recent rounds."""
    settings = load_settings()
    data = status_data(settings)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    w = settings.watch
    out.print(f"[bold]active adapter[/] {data['active'] or 'base model'}   lineage {' ← '.join(data['lineage'])}"
              + (f"   promoted {when(data['promoted_at'])}" if data["promoted_at"] else ""), highlight=False)
    if data["safety"]:
        out.print(f"  after promotion: {_safety_line(data['safety'], w)}", highlight=False)
    out.print(f"[bold]watcher[/] {_watcher_line(data)}", highlight=False)
    out.print(f"[bold]policy[/] {data['policy']}", highlight=False)
    t = data["triggers"]
    out.print(f"[bold]since the last round[/] ({when(t['last_start'])}): {t['new_runs']} chat runs "
              f"(trigger {w.new_runs or 'off'}), {t['new_feedback_pairs']} feedback pairs (trigger "
              f"{w.new_feedback_pairs or 'off'}), interval {f'{w.interval_s:g} s' if w.interval_s else 'off'}, "
              f"min gap {w.min_gap_s:g} s", highlight=False)
    if data["rounds"]:
        last_row = data["rounds"][-1]
        out.print(f"[bold]last round[/] {last_row['number']} ({when(last_row['started_at'])}): "
                  f"{last_row['outcome']}", highlight=False)
    out.print(f"[bold]next[/] {data['next']}", highlight=False)
    out.print(history_table(data["rounds"][-last:]))


def _safety_line(state: dict[str, Any], w) -> str:
    smoke = state.get("smoke")
    parts = [f"smoke {'passed' if smoke['pass'] else 'failed'}" if smoke else "smoke check pending"]
    live = state.get("live")
    if live:
        parts.append(f"live {live['state']} ({live['runs']} runs, baseline {live['baseline_runs']}): "
                     f"{live['reason']}")
    if state.get("state") == "rolled back":
        parts.append(f"rolled back: {state['reason']}")
    return "; ".join(parts)


def _watcher_line(data: dict[str, Any]) -> str:
    beat = data["watcher"]
    running = "a round is running now" if data["round_running"] else "no round running"
    if not beat:
        return f"never ran (strop improve --watch, or --once from cron); {running}"
    alive = pid_alive(beat["pid"])
    return (f"pid {beat['pid']} ({'alive' if alive else 'gone'}), last look {time.time() - beat['at']:.0f} s ago: "
            f"{beat['doing']}; {running}")


def history_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"rounds ({len(rows)} shown)", caption="gate: pooled pass rate, active → candidate")
    for column in ("round", "started", "trigger", "pairs", "adapter", "gate", "outcome"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("trigger", "outcome"))
    for r in rows:
        gate = (f"{r['gate_current']:.0%}→{r['gate_candidate']:.0%}" if r["gate_current"] is not None else "-")
        style = "red" if r["rolled_back"] else ("green" if r["promoted"] else "")
        table.add_row(str(r["number"]), when(r["started_at"]), r["trigger"].split(" (")[0], str(r["pairs"] or "-"),
                      r["adapter"] or "-", gate, r["outcome"], style=style)
    return table


@friendly_errors
def history(png: Annotated[Path | None, typer.Option("--png", help="Also plot pass rates per suite across rounds "
                                                     "into this PNG.")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="The rounds as JSON lines.")] = False,
            test: Annotated[bool, typer.Option("--test", help="Evaluate the active adapter on the held-out test "
                                               "split first, if no run of it exists (needs the model server).")]
            = False) -> None:
    """Every round: trigger, pairs, gate pass rates, outcome, rollbacks and why; the active adapter's pass rate on
    the held-out test split beside its gate pass rate."""
    from strop.training.history import evaluate_test, held_out, history_chart

    settings = load_settings()
    rows = round_rows(settings)
    active = Registry(settings.adapters_dir).active
    if test:
        from strop.serving.adapters import resolve_adapter
        from strop.serving.endpoint import connect

        with err.status("connecting to the model server") as status:
            endpoint = connect(settings, status.update)
        if active:
            resolve_adapter(settings, endpoint, active)
        with err.status("evaluating the test split"):
            evaluate_test(settings, endpoint, active)
    held = held_out(settings, active, rows)
    if as_json:
        for row in rows:
            print(json.dumps(row.to_dict()))
        print(json.dumps({"active": held.__dict__}))
    else:
        out.print(history_table([r.to_dict() for r in rows]))
        out.print(f"[bold]active adapter[/] {held.line()}", highlight=False)
    if png:
        err.print(f"Wrote {history_chart(settings, rows, png)}.")


STATUS_EXAMPLES = examples("strop status", "strop status --json")
HISTORY_EXAMPLES = examples("strop history", "strop history --png rounds.png")




def _lock_held(settings: Settings) -> bool:
    """Whether a round holds the improvement lock now (tried without waiting, released at once)."""
    path = settings.improve_dir / ".lock"
    if not path.exists():
        return False
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False

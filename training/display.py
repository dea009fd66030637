"""How a round shows itself in a terminal: a line per stage, progress bars, the report tables."""

from __future__ import annotations

import json

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strop.console import err, out


class RoundDisplay:
    """Shows a round on stderr: a line per stage, bars for rollouts, training and the gate runs."""

    def __init__(self):
        self.bars: Progress | None = None
        self.tasks: dict[str, int] = {}

    def stage(self, name: str, detail: str = "") -> None:
        self._close()
        err.print(f"[bold]▸ {name}[/] {detail}", highlight=False)

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.bars is None:
            self.bars = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err)
            self.bars.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.bars.add_task(stage, total=total)
        self.bars.update(self.tasks[stage], completed=done, total=total)

    def gate(self, run, cases):
        from strop.scenarios.cli import episode_progress

        self._close()
        err.print(f"[dim]  gate run {run.id} ({run.options.adapter or 'base model'})[/]")
        return episode_progress(run, cases)

    def _close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
        self.bars, self.tasks = None, {}



def show_round(report: dict) -> None:
    table = Table(title=f"round {report['round']} ({report['dir']})", show_header=False)
    table.add_column("stage", style="bold")
    table.add_column("result", overflow="fold")
    for stage, result in report.items():
        if isinstance(result, dict):
            table.add_row(stage, _round_cell(stage, result))
    out.print(table)
    gate = report.get("gate", {})
    if gate.get("suites"):
        suites = Table(title="gate: pass rate on held-out cases")
        for column in ("suite", "cases", "current", "candidate", "diff", "95% CI"):
            suites.add_column(column, justify="left" if column == "suite" else "right")
        for s in gate["suites"]:
            suites.add_row(s["suite"], str(s["cases"]), f"{s['current']:.1%}", f"{s['candidate']:.1%}",
                           f"{s['diff']:+.1%}", f"[{s['ci'][0]:+.1%}, {s['ci'][1]:+.1%}]")
        out.print(suites)


def _round_cell(stage: str, result: dict) -> str:
    if "skipped" in result:
        return f"[dim]skipped: {result['skipped']}[/]"
    if "stop" in result:
        return f"[yellow]{result['stop']}[/]"
    if stage == "prompts":
        solved = result.get("solved")
        return (f"{result['prompts']} prompts {result['by_source']}, "
                f"{result['dropped_as_eval_cases']} dropped as evaluation cases" +
                (f"; none from {', '.join(solved)} (every gate case passes already)" if solved else ""))
    if stage == "rollouts":
        return f"{result['episodes']} episodes with {result['adapter'] or 'the base model'}"
    if stage == "critic":
        mean = result["mean_score"]
        return f"{result['scored']} scored, mean {mean:.2f}" if mean is not None else "nothing scored"
    if stage == "pairs":
        shown = f", {result['demonstrations']} demonstrated" if result.get("demonstrations") else ""
        return (f"{result['pairs']} pairs ({result['human']} human{shown}); "
                f"groups without a margin: {result['no_margin']}")
    if stage == "train":
        m = result["metrics"]
        return (f"adapter {result['adapter']} (parent {result['parent'] or 'base'}): loss {m.get('loss', 0):.3f}, "
                f"reward margin {m.get('rewards/margins', 0):.2f}, held-out accuracy "
                f"{m.get('eval_rewards/accuracies', float('nan')):.2f}; curves {result['curves']}")
    if stage == "gate":
        return f"{'[green]pass[/]' if result.get('promote') else '[red]fail[/]'}: {result.get('reason', '')}"
    if stage == "promote":
        return f"promoted {result['promoted']}" if result.get("promoted") else f"nothing promoted: {result['reason']}"
    return json.dumps(result)[:200]

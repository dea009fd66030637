"""`strop eval ...`: run scenario suites, list and report runs, compare two runs."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from strop.config import Settings, load_settings
from strop.console import err, examples, friendly_errors, out
from strop.errors import StropError
from strop.scenarios import report
from strop.scenarios.runner import start_run
from strop.scenarios.runs import EvalOptions, Run, RunStore
from strop.scenarios.stats import p_text
from strop.scenarios.suite import Case, Suite, builtin_suites, load_suite


class _RunByDefault(TyperGroup):
    """``strop eval SUITE...`` means ``strop eval run SUITE...``; the other subcommands keep their names."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_RunByDefault, no_args_is_help=True,
    help="Scripted evaluation: run scenario suites, compare runs.\n\nExamples:\n\n  strop eval smoke\n\n"
         "  strop eval arithmetic tools --repeat 3 --md report.md\n\n  strop eval runs\n\n"
         "  strop eval compare RUN_A RUN_B")

Split = Annotated[str, typer.Option(help="Cases to run: gate (held out from training, selects adapters), test "
                                         "(held out from training and selection), train, or all.")]


@eval_app.command("run", epilog=examples("strop eval smoke", "strop eval run smoke  (the same)",
                                         "strop eval arithmetic rag --limit 20 --concurrency 4",
                                         "strop eval tools --adapter v3 --repeat 3 --json out.json",
                                         "strop eval scenarios/suites/my_suite.yaml", "strop eval --resume last"))
@friendly_errors
def run_suites(
    suites: Annotated[list[str] | None, typer.Argument(help=f"Suite files or built-in names "
                                                            f"({', '.join(builtin_suites())}).")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter to answer with (default: the active one; "
                                                     "'base' for none).")] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Episodes per case (for pass^k).")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Episodes in flight at once.")] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many cases per suite.")] = None,
    split: Split = "gate",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    md_path: Annotated[Path | None, typer.Option("--md", help="Write the summary as Markdown.")] = None,
    resume: Annotated[str | None, typer.Option(help="Finish an interrupted run (an id, a prefix, or 'last').")] = None,
) -> None:
    """Run scenario suites through the agent and grade every case; exit 1 when a suite misses its threshold."""
    settings = load_settings()
    store = RunStore(settings.eval_dir)
    if resume:
        run = store.open(resume)
        refs, options = [info["path"] for info in run.meta["suites"].values()], run.options
    elif suites:
        run, refs = None, suites
        if split not in ("gate", "train", "test", "all"):
            raise StropError(f"--split {split!r} is not one of gate, train, test, all.", fix="Pick one of those.")
        options = EvalOptions(adapter, repeat, concurrency, limit, split)
    else:
        raise StropError("Name at least one suite, or --resume a run.",
                         fix=f"Built-in suites: {', '.join(builtin_suites())}.")
    loaded, broken = _load(refs)
    cases = {s.name: s.select(options.split, options.limit) for s in loaded}
    if run is None or not run.finished:
        from strop.serving.endpoint import connect
        from strop.serving.policy import evaluation_endpoint

        with contextlib.ExitStack() as stack:
            with err.status("connecting to the model server") as status:
                endpoint = connect(settings, status.update)
                # a resumed run keeps the model it started with, even if another adapter was promoted since
                requested = options.adapter if run is None else options.adapter or "base"
                adapter, endpoint = stack.enter_context(evaluation_endpoint(settings, endpoint, requested,
                                                                            status.update))
            if run is None:
                options = replace(options, adapter=adapter)
                run = start_run(store, endpoint.model, options, loaded, cases, broken)
                err.print(f"[dim]run {run.id} · results in {run.dir}[/]")
            _execute(settings, endpoint, run, loaded, cases)
    _show(run, json_path, md_path)


def _load(refs: list[str]) -> tuple[list[Suite], dict[str, str]]:
    """Suites that load, and why the others did not (they are reported, the rest still run)."""
    loaded, broken = [], {}
    for ref in refs:
        try:
            loaded.append(load_suite(ref))
        except StropError as exc:
            broken[ref] = str(exc)
            err.print(f"[red]suite {ref} skipped:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    if not loaded:
        raise StropError("No suite could be loaded.", fix="Correct the suites named above.")
    return loaded, broken


def _execute(settings: Settings, endpoint, run: Run, suites: list[Suite], cases: dict[str, list[Case]]) -> None:
    from strop.scenarios.runner import complete_run

    try:
        with episode_progress(run, cases) as advance:
            complete_run(settings, endpoint, run, suites, cases, on_episode=advance, on_ingest=_ingest_status)
    except KeyboardInterrupt:
        err.print(f"[yellow]Interrupted: finished cases are saved; `strop eval --resume {run.id}` runs the rest.[/]")
        raise


@contextlib.contextmanager
def episode_progress(run: Run, cases: dict[str, list[Case]]) -> Iterator[Callable[[str, dict], None]]:
    """A progress bar per suite; yields the callback that advances it by one graded episode."""
    done = {(r["suite"], r["case"], r["repeat"]) for r in run.records()}
    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("[green]{task.fields[passed]} passed"), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=err) as progress:
        tasks = {s: progress.add_task(s, total=len(chosen) * run.options.repeat, passed=0,
                                      completed=sum(1 for d in done if d[0] == s)) for s, chosen in cases.items()}

        def advance(suite: str, record: dict) -> None:
            task = tasks[suite]
            progress.update(task, advance=1, passed=progress.tasks[task].fields["passed"] + record["passed"])

        yield advance


@contextlib.contextmanager
def _ingest_status(suite: Suite) -> Iterator[Callable[[int, int], None]]:
    label = f"{suite.name}: ingesting its memory corpus"
    with err.status(label) as status:
        yield lambda done, total: status.update(f"{label} ({done}/{total})")


def _show(run: Run, json_path: Path | None, md_path: Path | None) -> None:
    rows = report.summarize(run)
    out.print(report.summary_table(run, rows))
    for line in report.unfinished(run):
        err.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)  # one line each, greppable
    if json_path:
        json_path.write_text(json.dumps(report.to_json(run, rows), indent=2, ensure_ascii=False))
        err.print(f"[dim]wrote {json_path}[/]")
    if md_path:
        md_path.write_text(report.to_markdown(run, rows))
        err.print(f"[dim]wrote {md_path}[/]")
    failed = [r.suite for r in rows if not r.tag and not r.ok]
    broken = [name for name, info in run.meta["suites"].items() if info.get("broken")]
    verdicts = ([f"below threshold: {', '.join(failed)}"] if failed else []) + (
        [f"not loaded: {', '.join(broken)}"] if broken else [])
    if verdicts:
        err.print(f"[red]{'; '.join(verdicts)}[/]")
        raise typer.Exit(1)


@eval_app.command("runs", epilog=examples("strop eval runs"))
@friendly_errors
def list_runs() -> None:
    """List saved evaluation runs, oldest first."""
    runs = RunStore(load_settings().eval_dir).list()
    table = Table(title=f"{len(runs)} eval runs", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="* unfinished: `strop eval --resume RUN` runs the rest")
    for column in ("run", "when", "adapter", "suites", "episodes", "pass@1"):
        table.add_column(column, no_wrap=column != "suites", min_width=12 if column == "suites" else None)
    for run in runs:
        records = run.records()
        planned = sum(info.get("cases", 0) for info in run.meta["suites"].values()) * run.options.repeat
        rate = sum(r["passed"] for r in records) / len(records) if records else 0.0
        episodes = f"{len(records)}/{planned}" + ("" if run.finished else "[yellow]*[/]")
        table.add_row(run.id, time.strftime("%m-%d %H:%M", time.localtime(run.meta["created_at"])),
                      run.options.adapter or "base", ", ".join(run.meta["suites"]), episodes, f"{rate:.1%}")
    out.print(table)


@eval_app.command("report", epilog=examples("strop eval report last", "strop eval report 20261123 --md r.md"))
@friendly_errors
def show_report(
    run_id: Annotated[str, typer.Argument(help="A run id, a unique prefix, or 'last'.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    md_path: Annotated[Path | None, typer.Option("--md", help="Write the summary as Markdown.")] = None,
) -> None:
    """Show a saved run's summary again."""
    _show(RunStore(load_settings().eval_dir).open(run_id), json_path, md_path)


@eval_app.command("compare", epilog=examples("strop eval compare 20261123-1015 20261123-1102",
                                             "strop eval compare A B --png chart.png"))
@friendly_errors
def compare_runs(
    run_a: Annotated[str, typer.Argument(help="The baseline run.")],
    run_b: Annotated[str, typer.Argument(help="The run compared with it.")],
    png: Annotated[Path | None, typer.Option(help="Chart path (default: in run B's folder).")] = None,
) -> None:
    """Per-case changes, win/tie/loss and the pass-rate difference per suite with its exact 95% CI and the exact
    McNemar p on the cases that changed (the two always agree: p < 0.05 exactly when the CI excludes 0), and a
    chart."""
    store = RunStore(load_settings().eval_dir)
    a, b = store.open(run_a), store.open(run_b)
    comparisons, changes = report.compare(a, b)
    if not comparisons:
        raise StropError(f"Runs {a.id} and {b.id} have no suite with cases in common.",
                         fix="Compare two runs of the same suites.")
    if changes:
        out.print(report.changes_table(changes))
    out.print(report.comparison_table(a, b, comparisons))
    for c in comparisons:  # one plain line per suite: the figures a report quotes
        out.print(f"{c.suite}: {c.diff:+.1%} ({c.wins} won, {c.losses} lost of {c.cases} cases), "
                  f"95% CI [{c.low:+.1%}, {c.high:+.1%}], exact McNemar {p_text(c.p)}", highlight=False)
    chart = report.comparison_chart(a, b, comparisons, png or b.dir / f"compare-{a.id}.png")
    err.print(f"[dim]chart: {chart}[/]")

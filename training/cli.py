"""`strop trajectories ...`: look at and export what agents did."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from strop.config import load_settings
from strop.console import err, examples, friendly_errors, out
from strop.errors import StropError
from strop.training.trajectories import STATUSES, TrajectoryStore

trajectories_app = typer.Typer(help="Agent runs, as logged.\n\nExamples:\n\n  strop trajectories list\n\n"
                               "  strop trajectories export -o runs.jsonl", no_args_is_help=True)

Status = Annotated[str | None, typer.Option(help=f"Only runs that ended so: {', '.join(STATUSES)}.")]
Thread = Annotated[str | None, typer.Option(help="Only runs of this chat thread.")]
Scenario = Annotated[str | None, typer.Option(help="Only runs of this scenario suite.")]


def _store() -> TrajectoryStore:
    path = load_settings().trajectories_path
    if not path.exists():
        raise StropError(f"No trajectories yet ({path} does not exist).", fix='Run an agent: strop ask "..."')
    return TrajectoryStore(path)


@trajectories_app.command("list", epilog=examples("strop trajectories list", "strop trajectories list --limit 50 "
                                                  "--status error", "strop trajectories list --json"))
@friendly_errors
def list_runs(limit: Annotated[int, typer.Option(help="Most runs to show, newest first.")] = 20,
              status: Status = None, thread: Thread = None, scenario: Scenario = None,
              as_json: Annotated[bool, typer.Option("--json", help="One JSON summary per line.")] = False) -> None:
    """List runs, newest first."""
    runs = list(_store().query(limit=limit, status=status, thread_id=thread, scenario=scenario))
    if as_json:
        for t in runs:
            print(json.dumps({"id": t.id, "created_at": t.created_at, "status": t.status, "prompt": t.prompt,
                              "answer": t.answer, "steps": t.model_calls, "tokens": t.completion_tokens}))
        return
    table = Table(title=f"{len(runs)} runs")
    for column in ("id", "when", "status", "steps", "tokens", "prompt", "answer"):
        table.add_column(column, overflow="fold" if column in ("prompt", "answer") else "ellipsis")
    for t in runs:
        table.add_row(t.id[:10], time.strftime("%m-%d %H:%M", time.localtime(t.created_at)), t.status,
                      str(t.model_calls), str(t.completion_tokens), t.prompt[:60], (t.answer or "")[:40])
    out.print(table)


@trajectories_app.command("show", epilog=examples("strop trajectories show 3f2a9c", "strop trajectories show "
                                                  "3f2a9c --json"))
@friendly_errors
def show(trajectory_id: Annotated[str, typer.Argument(help="An id or a unique prefix of one.")],
         as_json: Annotated[bool, typer.Option("--json", help="The whole record as JSON.")] = False) -> None:
    """Show one run: every message, tool call and result, with timings."""
    t = _store().get(trajectory_id)
    if as_json:
        print(json.dumps(t.to_dict(), indent=2, ensure_ascii=False))
        return
    out.print(f"[bold]{t.id}[/]  {t.status}  model {t.model}{f' + {t.adapter}' if t.adapter else ''}  "
              f"{t.model_calls} steps  {t.prompt_tokens}+{t.completion_tokens} tokens  {t.duration_s:.1f} s")
    for message in t.messages:
        body = message.get("content") or ""
        if message.get("tool_calls"):
            body = body or json.dumps([c["function"] for c in message["tool_calls"]])
        out.print(Panel(str(body), title=message["role"] + (f" · {message['name']}" if message.get("name") else ""),
                        title_align="left"), markup=False)
    for error in t.errors:
        err.print(f"[red]error:[/] {error}")


@trajectories_app.command("export", epilog=examples("strop trajectories export -o runs.jsonl",
                                                    "strop trajectories export --scenario smoke > smoke.jsonl"))
@friendly_errors
def export(output: Annotated[Path | None, typer.Option("-o", "--output", help="File (default: stdout).")] = None,
           fmt: Annotated[str, typer.Option("--format", help="Only jsonl for now.")] = "jsonl",
           status: Status = None, thread: Thread = None, scenario: Scenario = None) -> None:
    """Export runs as JSON lines (oldest first), one whole record per line."""
    if fmt != "jsonl":
        raise StropError(f"Unknown export format {fmt!r}.", fix="Use --format jsonl.")
    store = _store()
    filters = {"status": status, "thread_id": thread, "scenario": scenario}
    if output is None:
        count = store.export_jsonl(sys.stdout, **filters)
    else:
        tmp = output.with_name(output.name + ".partial")
        with tmp.open("w") as fh:
            count = store.export_jsonl(fh, **filters)
        tmp.replace(output)
    err.print(f"Exported {count} trajectories{f' to {output}' if output else ''}.")

"""The training room's commands: `strop trajectories` (what agents did), `strop critic` (the pairwise judge),
`strop improve` (self-improvement rounds) and `strop adapters` (which adapter agents use)."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strop.config import load_settings, machine
from strop.console import err, examples, friendly_errors, out
from strop.errors import StropError
from strop.trajectories import STATUSES, TrajectoryStore

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


critic_app = typer.Typer(help="The pairwise LLM judge that ranks answers.\n\nExamples:\n\n"
                         "  strop critic calibrate --limit 40", no_args_is_help=True)

DEFAULT_PAIRS = ("preference/hhh_pairs.jsonl", "preference/truthfulqa_pairs.jsonl")  # under the data_dir setting
PairFiles = Annotated[list[Path] | None, typer.Argument(
    help="JSONL pairs {id, category, prompt, chosen, rejected}; default: the HHH and TruthfulQA sets under the "
         "data_dir setting.")]


@critic_app.command("calibrate", epilog=examples(
    "strop critic calibrate --limit 40",
    "strop critic calibrate my_pairs.jsonl --concurrency 4 --json calibration.json",
    "STROP_CRITIC__LLM_URL=http://gpu-box:8000/v1 strop critic calibrate"))
@friendly_errors
def calibrate(
    files: PairFiles = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many pairs per file (seeded sample).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample and of where the chosen answer is shown.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Pairs judged at once (each asks both orders).")] = 8,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds one judge call may wait; a busy CPU server queues "
                                           "long prompts for minutes.")] = 600,
    against_gold: Annotated[bool, typer.Option("--against-gold", help="Measure the label-free critic instead: the "
                                               "arguments are suites; K episodes per train case, pairs made with "
                                               "the graders hidden, then checked by them.")] = False,
    samples: Annotated[int, typer.Option("--samples", "-k", min=2, help="--against-gold: episodes per case.")] = 4,
    mode: Annotated[str, typer.Option(help="pairwise: the pairwise prompt in both orders; group: the group ranker "
                                      "(checklist from the question, both orders); reward: reward models trained "
                                      "on the other folds' pairs (TRL, cross-fitted by question).")] = "pairwise",
    folds: Annotated[int, typer.Option(min=2, help="--mode reward: folds of the pairs, split by question.")] = 2,
    temperature: Annotated[float | None, typer.Option(min=0.01, help="--against-gold: sampling temperature "
                                                      "(default: improve.temperature).")] = None,
) -> None:
    """Measure how often the judge agrees with human preference labels (or, with --against-gold, how often the
    gold graders agree with the label-free critic's pairs)."""
    from strop.scenarios import judge as pairwise

    settings = load_settings()
    if mode not in ("pairwise", "group", "reward"):
        raise StropError(f"Unknown --mode {mode!r}.", fix="Use --mode pairwise, group or reward.")
    if against_gold:
        _critic_against_gold(settings, [str(f) for f in files or []], limit or 16, samples,
                             temperature or settings.improve.temperature, seed, json_path)
        return
    pairs = _labelled_pairs(settings, files, limit, seed)
    started = time.monotonic()
    if mode == "reward":
        figures = {"judge": "reward model (TRL, LoRA on the base model)", "folds": folds,
                   **_cross_fitted(settings, pairs, folds, seed)}
        _calibration_report(figures, json_path, started)
        return
    judge = pairwise.LLMJudge(_judge_endpoint(settings), settings.critic, timeout_s=timeout,
                              prompts_dir=settings.prompts_dir)
    with Progress(TextColumn("judging"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tally]}"),
                  TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("judging", total=len(pairs), tally="")
        tally = {"agree": 0, "disagree": 0, "tie": 0}

        def done(outcome) -> None:
            tally[outcome.verdict] += 1
            progress.update(task, advance=1, tally=" ".join(f"{k} {v}" for k, v in tally.items()))

        outcomes = asyncio.run(_judge_all(judge, pairwise.calibrate(judge, pairs, seed, concurrency, done, mode)))
    figures = {"judge": judge.endpoint.model, "mode": mode, "seed": seed, "limit": limit,
               "tie_margin": settings.critic.tie_margin, "outcomes": outcomes}
    _calibration_report(figures, json_path, started)
    failed = [o for o in outcomes if o.preference.source == "none"]
    if len(failed) == len(outcomes):
        raise StropError(f"The judge gave no verdict on any pair: {failed[0].preference.reasoning[0]}",
                         fix="Check the judge server (strop serve status, or critic.llm_url) and try again.")
    for o in failed[:5]:  # ties with a reason; the JSON report has them all
        err.print(f"[yellow]no verdict[/] {o.pair.source} {o.pair.id}: {o.preference.reasoning[0]}",
                  markup=True, highlight=False)
    if len(failed) > 5:
        err.print(f"[yellow]... and {len(failed) - 5} more pairs without a verdict.[/]")


@critic_app.command("train-reward", epilog=examples("strop critic train-reward",
                                                    "strop critic train-reward my_pairs.jsonl"))
@friendly_errors
def train_reward(
    files: PairFiles = None,
) -> None:
    """Train the reward model the critic's judge uses with critic.judge_mode = reward, on labelled pairs and the
    pairs people gave in chat (/feedback)."""
    from strop.feedback import FeedbackLog
    from strop.serving.merge import base_model_dir
    from strop.training.reward_model import Recipe, from_feedback, reward_model_dir, train

    settings = load_settings()
    pairs = _labelled_pairs(settings, files, None, 0)
    pairs += from_feedback(FeedbackLog(settings.feedback_dir).human_pairs())
    with err.status(f"training a reward model on {len(pairs)} pairs"):
        path = train(pairs, base_model_dir(settings), reward_model_dir(settings),
                     Recipe(threads=settings.train.threads, bf16=settings.train.bf16))
    out.print(f"Reward model trained on {len(pairs)} pairs: {path}. The critic uses it with critic.judge_mode = "
              f"\"reward\" and critic.judge_weight above 0.")


def _labelled_pairs(settings, files: list[Path] | None, limit: int | None, seed: int) -> list:
    from strop.scenarios import judge as pairwise

    pairs = []
    for path in files or [settings.data_dir / name for name in DEFAULT_PAIRS]:
        loaded, problems = pairwise.load_pairs(path)
        for problem in problems:
            err.print(f"[yellow]skipped[/] {problem}", markup=True, highlight=False)
        pairs += pairwise.sample_pairs(loaded, limit, seed)
    if not pairs:
        raise StropError("No preference pairs to judge.", fix="Correct the lines reported above.")
    return pairs


def _cross_fitted(settings, pairs: list, folds: int, seed: int) -> dict:
    import tempfile

    from strop.serving.merge import base_model_dir
    from strop.training.reward_model import Recipe, cross_fitted

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with err.status("reward models") as status, tempfile.TemporaryDirectory(dir=settings.state_dir) as work:
        outcomes = cross_fitted(pairs, base_model_dir(settings), Path(work), folds, settings.critic.tie_margin,
                                Recipe(threads=settings.train.threads, seed=seed, bf16=settings.train.bf16),
                                status.update)
    return {"mode": "reward", "seed": seed, "tie_margin": settings.critic.tie_margin, "outcomes": outcomes}


def _calibration_report(figures: dict, json_path: Path | None, started: float) -> None:
    """The agreement table, and the figures as JSON, beside the share a judge that prefers the longer answer
    agrees (a baseline any judge has to beat: people chose the longer answer in about 6 of 10 of these pairs)."""
    from strop.scenarios import judge as pairwise

    outcomes = figures.pop("outcomes")
    longer = sum(len(o.pair.chosen) > len(o.pair.rejected) for o in outcomes)
    figures.update(seconds=round(time.monotonic() - started, 1), machine=machine(), longer_answer={
        "agree": longer, "n": len(outcomes), "agreement": longer / len(outcomes),
        "ci95": list(pairwise.wilson(longer, len(outcomes)))}, **pairwise.report(outcomes))
    if json_path:
        json_path.write_text(json.dumps({**figures, "pairs": [_outcome(o) for o in outcomes]}, indent=2))
        err.print(f"Wrote {json_path}.")
    _calibration_table(figures)
    base = figures["longer_answer"]
    out.print(f"Baseline: preferring the longer answer agrees on {base['agree']} of {base['n']} pairs "
              f"({base['agreement']:.0%}, CI95 {base['ci95'][0]:.2f}-{base['ci95'][1]:.2f}).")


def _critic_against_gold(settings, suites: list[str], limit: int, samples: int, temperature: float, seed: int,
                         json_path: Path | None) -> None:
    from strop.scenarios.suite import load_suite
    from strop.serving.endpoint import connect
    from strop.training.calibrate import against_gold

    if not suites:
        raise StropError("--against-gold needs suite names.", fix="e.g. strop critic calibrate --against-gold "
                         "arithmetic word_problems rag")
    loaded = [load_suite(name) for name in suites]
    with Progress(TextColumn("{task.fields[suite]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        tasks: dict[str, int] = {}

        @functools.cache
        def endpoint():  # asked for only when episodes are left to sample: kept ones scored again need no server
            server = progress.add_task("server", total=None, suite="connecting to the model server")
            try:
                return connect(settings, lambda message: progress.update(server, suite=message[:100]))
            finally:
                progress.remove_task(server)

        def advance(suite: str, done: int, total: int) -> None:
            if suite not in tasks:
                tasks[suite] = progress.add_task(suite, total=total, suite=suite)
            progress.update(tasks[suite], completed=done)

        figures = against_gold(settings, endpoint, loaded, limit, samples, temperature, seed, advance)
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))
        err.print(f"Wrote {json_path}.")
    table = Table(title=f"Label-free critic vs the gold graders ({samples} episodes a case, T={temperature:g})",
                  caption="accuracy: share of the critic's pairs the graders order whose chosen episode they score "
                          "higher (CI95: Wilson); ties: pairs the graders score alike; coverage: share of cases "
                          "with any pair; mixed: cases whose episodes the graders split (pass and fail).")
    for column in ("suite", "cases", "pairs", "accuracy", "CI95", "ties", "coverage", "pass rate", "mixed",
                   "votes"):
        table.add_column(column, justify="left" if column in ("suite", "votes") else "right")
    for f in figures["suites"]:
        ci = f"{f['ci95'][0]:.2f}-{f['ci95'][1]:.2f}" if f["ci95"] else "-"
        votes = " ".join(f"{k} {v}" for k, v in f["verdicts"].items() if v)
        table.add_row(f["suite"], str(f["cases"]), str(f["pairs"]), _share(f["pair_accuracy"]), ci,
                      str(f["gold_ties"]), _share(f["coverage"]), _share(f["pass_rate"]), str(f["gold_mixed"]), votes)
    out.print(table)


def _judge_endpoint(settings):
    from strop.serving.endpoint import connect, judge_endpoint

    if settings.critic.llm_url:  # a separate judge server: no need to start the embedded one
        return judge_endpoint(settings, None)
    with err.status("connecting to the model server") as status:
        return judge_endpoint(settings, connect(settings, status.update))


def _outcome(o) -> dict:
    p = o.preference
    return {"id": o.pair.id, "file": o.pair.source, "category": o.pair.category, "chosen_as": o.chosen_as,
            "verdict": o.verdict, "p_a": round(p.p_a, 4), "source": p.source, "seconds": round(o.seconds, 2),
            "reasoning": list(p.reasoning)}


async def _judge_all(judge, work):
    try:
        return await work
    finally:
        await judge.close()


def _calibration_table(figures: dict) -> None:
    per_pair = figures["all"]["mean_seconds"]
    table = Table(title=f"Judge {figures['judge']} vs human labels ({figures['seconds']} s, {per_pair:.1f} s a pair)",
                  caption="agree: share of the non-tie verdicts that prefer the human-chosen answer (CI95: Wilson); "
                          "½ties: ties counted as half; p(ch): mean probability given to the chosen answer; "
                          "lp: pairs read from logprobs; fail: no verdict.")
    table.add_column("set", overflow="fold", min_width=12)
    for column in ("n", "agree", "CI95", "ties", "½ties", "p(ch)", "lp", "fail"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(*_figure_cells("all", figures["all"]), end_section=True)
    for name, file in figures["files"].items():
        table.add_row(*_figure_cells(Path(name).stem, file), style="bold")
        for category, figure in file["categories"].items():
            table.add_row(*_figure_cells(f"  {category}", figure))
        table.add_section()
    out.print(table)


def _figure_cells(name: str, f: dict) -> list[str]:
    ci = f"{f['ci95'][0]:.2f}-{f['ci95'][1]:.2f}" if f["ci95"] else "-"
    return [name, str(f["n"]), _share(f["agreement"]), ci, _share(f["tie_rate"]), _share(f["agreement_ties_half"]),
            f"{f['mean_p_chosen']:.2f}", str(f["logprobs"]), str(f["failed"])]


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# -- self-improvement ------------------------------------------------------------------------

adapters_app = typer.Typer(help="Trained LoRA adapters: which one agents use, promotion and rollback.\n\n"
                           "Examples:\n\n  strop adapters list\n\n  strop adapters rollback --reason 'worse in chat'",
                           no_args_is_help=True)


@friendly_errors
def improve(rounds: Annotated[int, typer.Option(min=1, help="Rounds to run one after another.")] = 1,
            watch: Annotated[bool, typer.Option("--watch", help="Stay running: start rounds when [watch] triggers "
                                                "fire, check and roll back promotions, prune.")] = False,
            once: Annotated[bool, typer.Option("--once", help="One such look, then exit (for cron or a systemd "
                                               "timer; a no-op when nothing is due).")] = False,
            abandon: Annotated[bool, typer.Option("--abandon", help="End the unfinished round where it stands (one "
                                                  "that fails every time); its files and the active adapter stay."
                                                  )] = False,
            reason: Annotated[str, typer.Option(help="Why, with --abandon (shown in `strop history`).")] =
            "abandoned by hand") -> None:
    """Run self-improvement rounds: rollouts -> critic -> pairs -> DPO -> gate -> promote.

    An interrupted round resumes from its last finished stage when run again; `--abandon` ends it instead.
    """
    if abandon:
        from strop.training.watch import abandon_unfinished

        rnd, ended = abandon_unfinished(load_settings(), reason)
        out.print(f"Round {rnd.number} abandoned at {ended[0]}: {reason}. The next round starts afresh.")
        return
    if watch or once:
        from strop.training.watch_cli import unattended

        unattended(loop=watch)
        return
    from strop.serving.endpoint import connect
    from strop.training.loop import Improver

    settings = load_settings()
    with err.status("connecting to the model server") as status:
        endpoint = connect(settings, status.update)
    from strop.training.display import RoundDisplay, show_round

    display = RoundDisplay()
    improver = Improver(settings, endpoint, display)
    with improver.locked():
        for _ in range(rounds):
            report = improver.run_round()
            display.stage("report")
            show_round(report)


@adapters_app.command("list", epilog=examples("strop adapters list"))
@friendly_errors
def list_adapters() -> None:
    """Trained adapters, oldest first; the active one is marked."""
    from strop.serving.adapters import Registry

    registry = Registry(load_settings().adapters_dir)
    active = registry.active
    table = Table(title=f"adapters (active: {active or 'base model'})")
    for column in ("", "name", "created", "parent", "round", "pairs", "loss", "held-out acc"):
        table.add_column(column)
    for a in registry.adapters():
        m = a.meta.get("metrics", {})
        table.add_row("●" if a.name == active else "", a.name,
                      time.strftime("%m-%d %H:%M", time.localtime(a.meta.get("created_at", 0))), a.parent or "base",
                      str(a.meta.get("round", "-")), str(sum(a.meta.get("pairs", {}).values())),
                      f"{m.get('loss', float('nan')):.3f}", f"{m.get('eval_rewards/accuracies', float('nan')):.2f}")
    out.print(table)
    for entry in registry.history[-5:]:
        when = time.strftime("%m-%d %H:%M", time.localtime(entry["at"]))
        err.print(f"[dim]{when} {entry['event']} {entry['adapter'] or 'base'} (was {entry['previous'] or 'base'}): "
                  f"{entry['reason']}[/]", highlight=False)


@adapters_app.command("promote", epilog=examples("strop adapters promote v3 --reason 'checked by hand'"))
@friendly_errors
def promote_adapter(name: Annotated[str, typer.Argument(help="Adapter to make active ('base' for none).")],
                    reason: Annotated[str, typer.Option(help="Why, for the history.")] = "promoted by hand") -> None:
    """Hot-load an adapter into the model server and make agents use it."""
    _switch(name, "promote", reason)


@adapters_app.command("rollback", epilog=examples("strop adapters rollback --reason 'more tool errors in chat'"))
@friendly_errors
def rollback_adapter(
        reason: Annotated[str, typer.Option(help="Why, for the history.")] = "rolled back by hand") -> None:
    """Return to the adapter that was active before the current one."""
    from strop.serving.adapters import Registry

    registry = Registry(load_settings().adapters_dir)
    if registry.active is None:
        raise StropError("No adapter is active: agents already use the base model.", fix="Nothing to roll back.")
    _switch(registry.previous() or "base", "rollback", reason)


def _switch(name: str, event: str, reason: str) -> None:
    from strop.serving.endpoint import connect
    from strop.serving.policy import switch_to

    settings = load_settings()
    with err.status("connecting to the model server") as status:
        endpoint = connect(settings, status.update)
        target = switch_to(settings, endpoint, name, event, reason, status.update)  # served before it is active
    out.print(f"active: {target or 'base model'}")

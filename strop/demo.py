"""`strop demo`: the main job, start to finish, sized for the embedded model on a small CPU machine.

Ingest sample documents into the agent's memory -> evaluate the active model on the gate cases (the
baseline) -> one improvement round, whose gate reuses that baseline as its current side and evaluates
the new adapter -> a report of pass rates before and after, per suite, with 95% intervals, a chart and
a Markdown file. The test split, which no round and no gate reads, is evaluated before the round and, when an
adapter was promoted, again after it: the gate selected the adapter, so only the test split measures it
without bias. Interrupted, it resumes: ingesting again adds nothing, the round picks up where it stopped and
finished evaluations are reused.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from strop.config import Settings, load_settings, machine_text
from strop.console import err, friendly_errors, out
from strop.scenarios.stats import p_text

# The built-in suites the base model passes some cases of: word_problems (also in `strop improve`'s default) is
# left out: the base model solves none, so it learns only from worked problems (improve.demonstrations), which add
# about half an hour of training on 2 cores, more than the demo's whole budget.
DEMO_SUITES = ["arithmetic", "tools", "rag"]
SAMPLE_DOCS = Path(str(resources.files("strop.scenarios").joinpath("suites", "data", "team_notes.jsonl")))


@friendly_errors
def demo(
    docs: Annotated[list[Path] | None, typer.Option("--docs", help="Files or folders to ingest (default: sample "
                                                    "notes).")] = None,
    prompts: Annotated[int, typer.Option(min=1, help="Training cases drawn per suite for the round.")] = 24,
    samples: Annotated[int, typer.Option(min=2, help="Episodes per prompt in the round's rollouts.")] = 4,
    gate_limit: Annotated[int | None, typer.Option(min=1, help="Gate cases per suite, before and after (default: "
                                                   "all).")] = None,
    suites: Annotated[list[str] | None, typer.Option(
        "--suite", help=f"A suite the round learns from and is gated on (repeat it; default: {', '.join(DEMO_SUITES)})."
    )] = None,
) -> None:
    """Ingest, evaluate, run one self-improvement round, evaluate again, and report the change."""
    from strop.serving.endpoint import connect
    from strop.training.display import RoundDisplay, show_round
    from strop.training.history import held_out
    from strop.training.loop import Improver

    started = time.monotonic()
    settings = sized(load_settings(), prompts, samples, gate_limit, suites or DEMO_SUITES)
    with err.status("connecting to the model server") as status:
        endpoint = connect(settings, status.update)
    ingest(settings, docs or [SAMPLE_DOCS])
    display = RoundDisplay()
    improver = Improver(settings, endpoint, display)
    with improver.locked():
        rnd = improver.current_round()
        display.stage("baseline", f"(gate cases of {', '.join(settings.improve.suites)})")
        baseline = improver.current_gate_run(rnd)
        display.stage("test", "(held-out cases no round selects on), before the round")
        test_before = test_split(settings, endpoint, improver.registry.active)
        report = improver.run_round()
    if report.get("promote", {}).get("promoted"):
        display.stage("test", "(held-out cases no round selects on), the promoted adapter")
    test_after = test_split(settings, endpoint, improver.registry.active)  # nothing promoted: the run before
    display.stage("report")
    show_round(report)
    held = held_out(settings, improver.registry.active).line()
    took = timing_line(report, time.monotonic() - started)
    write_report(settings, baseline, report, held, (test_before, test_after), took)
    out.print(f"Active adapter {held}", highlight=False)
    out.print(outcome_line(report), highlight=False)
    if test_after.id != test_before.id and (line := test_line(test_before, test_after)):
        out.print(line, highlight=False)
    out.print(took, highlight=False)


def sized(settings: Settings, prompts: int, samples: int, gate_limit: int | None, suites: list[str]) -> Settings:
    """The settings with a round small enough for the demo (the rest of ``[improve]`` as configured)."""
    improve = settings.improve.model_copy(update={
        "suites": suites, "prompts_per_suite": prompts, "samples": samples, "gate_limit": gate_limit,
        "chat_prompts": min(settings.improve.chat_prompts, prompts),
        "synthetic_prompts": min(settings.improve.synthetic_prompts, prompts)})
    return settings.model_copy(update={"improve": improve})


def ingest(settings: Settings, docs: list[Path]) -> None:
    """The documents into the agent's namespace, where its memory search and the round's questions find them."""
    from strop.memory.core import Memory

    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), console=err) as bars:
        task = bars.add_task("ingest", total=None)
        with Memory(settings) as memory:
            report = memory.ingest(docs, namespace=settings.agent.namespace,
                                   progress=lambda done, total: bars.update(task, completed=done, total=total))
    for problem in report.problems:
        err.print(f"[yellow]{problem}[/]", highlight=False)


def test_split(settings: Settings, endpoint, adapter: str | None):
    """``adapter``'s run on the test split, asked where it is served now (a promotion moves the server); a clean
    run of it on the same cases is reused."""
    from strop.serving.policy import ensure_loaded
    from strop.training.history import evaluate_test

    with err.status(f"evaluating {adapter or 'the base model'} on the test split"):
        return evaluate_test(settings, ensure_loaded(settings, endpoint, adapter), adapter)


def test_line(before, after) -> str:
    """The promoted adapter against the model before it on the test split, in one sentence."""
    from strop.scenarios.report import compare
    from strop.scenarios.stats import paired

    comparisons, _ = compare(before, after)
    if not comparisons:
        return ""
    cases, wins, losses = (sum(getattr(c, f) for c in comparisons) for f in ("cases", "wins", "losses"))
    best = max(comparisons, key=lambda c: c.diff)
    line = (f"On the test split, which no round selects on: {wins} won and {losses} lost of {cases} cases "
            f"(one-sided exact {p_text(paired(cases, wins, losses).p_better)}); {best.suite} went from "
            f"{best.rate_a:.0%} to {best.rate_b:.0%}.")
    graded = min(comparisons, key=lambda c: c.grade_p)  # partial credit moves before whole passes do
    if graded.grade_p < 0.05 and graded.grade_up > graded.grade_down:
        line += (f" Partial credit rose on {graded.suite}: graded higher on {graded.grade_up} cases, lower on "
                 f"{graded.grade_down} (two-sided exact {p_text(graded.grade_p)}), {graded.grade_a:.2f} to "
                 f"{graded.grade_b:.2f}.")
    return line


def outcome_line(report: dict) -> str:
    """What the round did, in one sentence a newcomer can read."""
    gate, promoted = report.get("gate", {}), report.get("promote", {}).get("promoted")
    if not promoted:
        why = gate.get("reason") or next((r["stop"] for r in report.values() if isinstance(r, dict) and "stop" in r),
                                         "the round stopped early")
        return f"Nothing promoted, the model in use stays: {why}."
    best = max(gate["suites"], key=lambda s: s["diff"])
    return (f"Promoted {promoted}: it passes more held-out gate cases than the model before it, "
            f"{gate['wins']} won and {gate['losses']} lost (one-sided exact {p_text(gate['p'])}); "
            f"{best['suite']} went from {best['current']:.0%} to {best['candidate']:.0%}.")


def test_markdown(before=None, after=None) -> str:
    """The test split before and after the round, when an adapter was promoted."""
    from strop.scenarios import report as reports

    if before is None or after is None or before.id == after.id:
        return ""
    comparisons, changes = reports.compare(before, after)
    return ("## Test split (no round selects on it)\n\n" + test_line(before, after) + "\n\n"
            + reports.comparison_markdown(before, after, comparisons, changes) + "\n")


def pair_examples(pairs: Path, limit: int = 4) -> str:
    """A few of the round's preference pairs as a Markdown table: the question, the action the critic preferred
    and the one it rejected at the first step where two episodes differ, with their scores."""
    from strop.files import read_lines

    rows, tools = [], set()
    for pair in read_lines(pairs):
        chosen = pair["chosen"][-1]["content"]
        # one example per kind of chosen action shows the variety (a memory answer is plain text)
        tool = chosen.split('"args"')[0] if chosen.startswith("{") else "answer"
        if tool in tools:
            continue
        tools.add(tool)
        question = next((m["content"] for m in reversed(pair["prompt"]) if m["role"] == "user"), "")
        made = pair.get("provenance", {})
        rows.append(f"| {_cell(question)} | {_cell(chosen)} ({made.get('chosen_score', 1):.2f}) "
                    f"| {_cell(pair['rejected'][-1]['content'])} ({made.get('rejected_score', 0):.2f}) |")
        if len(rows) == limit:
            break
    if not rows:
        return ""
    return ("## Pairs the critic made (first differing action, score in brackets)\n\n"
            "| question | chosen | rejected |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def timing_line(report: dict, seconds: float) -> str:
    """How long the demo took, its round's stages apart, and on what machine (a CPU's matrix unit sets its speed)."""
    from strop.training.loop import Round

    minutes = Round(Path(report["dir"])).stage_minutes()
    minutes.pop("prompts", None)  # begun with the round's folder: it holds the baseline and the test split before
    stages = ", ".join(f"{stage} {value:g}" for stage, value in minutes.items() if value)
    return (f"The demo took {seconds / 60:.1f} minutes on {machine_text()}: the round {sum(minutes.values()):.1f} "
            f"({stages}), the rest starting the server, the baseline and the test split.")


def write_report(settings: Settings, baseline, report: dict, held: str, tests: tuple, took: str) -> None:
    """Before/after chart and Markdown in ``<state>/demo/``, from the round's gate runs and the test split's runs
    before and after (``tests``)."""
    from strop.scenarios import report as reports
    from strop.scenarios.runs import RunStore

    folder = settings.state_dir / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    gate = report.get("gate", {})
    if not gate.get("runs"):
        out.print(f"Baseline run {baseline.id}; no candidate to compare: "
                  f"{gate.get('skipped') or gate.get('stop') or 'the round stopped early'}.")
        return
    store = RunStore(settings.eval_dir)
    before, after = store.open(gate["runs"]["current"]), store.open(gate["runs"]["candidate"])
    comparisons, changes = reports.compare(before, after)
    chart = reports.comparison_chart(before, after, comparisons, folder / f"round-{report['round']:04d}.png")
    markdown = folder / f"round-{report['round']:04d}.md"
    promoted = report.get("promote", {})
    markdown.write_text(
        f"# Round {report['round']}\n\n{outcome_line(report)}\n\n{took}\n\n"
        f"{'Promoted ' + promoted['promoted'] if promoted.get('promoted') else 'Nothing promoted'}: "
        f"{promoted.get('reason', gate.get('reason', ''))}\n\n"
        + (f"Active adapter {held}\n\n" if held else "")
        + "## Gate\n\n" + reports.comparison_markdown(before, after, comparisons, changes) + "\n"
        + test_markdown(*tests) + pair_examples(Path(report["dir"]) / "pairs.jsonl"), encoding="utf-8")
    out.print(f"Report: {markdown}  chart: {chart}")

"""What a run says: pass rates per suite and tag, run against run comparisons, tables and a chart.

pass@1 is the share of episodes that passed; pass^k the share of cases whose k episodes all passed
(k = --repeat), which falls when an agent is right only by luck. Timeouts and errors count as failures.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.table import Table

from strop.scenarios.runs import Run
from strop.scenarios.stats import Paired, p_cell, paired, sign_p


@dataclass(frozen=True)
class Row:
    suite: str
    tag: str  # "" for the whole suite
    cases: int
    episodes: int
    pass_at_1: float
    pass_hat_k: float
    judge: float | None  # mean judge score, when the suite has rubric graders
    tokens: float  # mean per episode
    latency_s: float  # median per episode
    unfinished: int  # episodes that timed out or failed to run
    threshold: float | None = None  # on whole-suite rows

    @property
    def ok(self) -> bool:
        return self.threshold is None or self.pass_at_1 >= self.threshold


def summarize(run: Run) -> list[Row]:
    """One row per suite, then one per tag of that suite."""
    records = run.records()
    rows = []
    for suite, info in run.meta["suites"].items():
        mine = [r for r in records if r["suite"] == suite]
        rows.append(_row(suite, "", mine, info.get("threshold", 0.0)))
        for tag in sorted({t for r in mine for t in r["tags"]}):
            rows.append(_row(suite, tag, [r for r in mine if tag in r["tags"]]))
    return rows


def _row(suite: str, tag: str, records: list[dict[str, Any]], threshold: float | None = None) -> Row:
    by_case = _by_case(records)
    judged = [g["score"] for r in records for g in r["grades"] if g["grader"] == "judge"]
    return Row(
        suite=suite, tag=tag, cases=len(by_case), episodes=len(records),
        pass_at_1=_mean([r["passed"] for r in records]),
        pass_hat_k=_mean([all(runs) for runs in by_case.values()]),
        judge=_mean(judged) if judged else None,
        tokens=_mean([r.get("tokens", 0) for r in records]),
        latency_s=statistics.median([r.get("latency_s", 0.0) for r in records]) if records else 0.0,
        unfinished=sum(r["status"] in ("timeout", "error") for r in records),
        threshold=threshold,
    )


def unfinished(run: Run) -> list[str]:
    """Why cases were skipped at load, or did not finish: one line each."""
    lines = [f"{suite}: skipped: {p}" for suite, info in run.meta["suites"].items() for p in info.get("problems", [])]
    lines += [f"{r['suite']}/{r['case']}#{r['repeat']}: {r['status']}: {r['error']}"
              for r in run.records() if r["status"] in ("timeout", "error")]
    return lines


def summary_table(run: Run, rows: list[Row]) -> Table:
    k = run.options.repeat
    adapter = f" + {run.options.adapter}" if run.options.adapter else ""
    table = Table(title=f"eval run {run.id} · {run.meta['model']}{adapter} · split {run.options.split}",
                  box=box.SIMPLE_HEAD)
    names = [_suite_cell(r) for r in rows]
    table.add_column("suite / tag", no_wrap=True, min_width=max(map(len, names), default=5))
    for column in ("cases", "pass@1", f"pass^{k}", "judge", "tokens", "p50 s", "unfinished"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, row in zip(names, rows, strict=True):
        style = "" if row.tag else ("bold green" if row.ok else "bold red")
        table.add_row(name, str(row.cases), f"{row.pass_at_1:.1%}", f"{row.pass_hat_k:.1%}",
                      "-" if row.judge is None else f"{row.judge:.2f}", f"{row.tokens:.0f}", f"{row.latency_s:.1f}",
                      str(row.unfinished), style=style)
    return table


def _suite_cell(row: Row) -> str:
    """A suite with its verdict (a threshold missed is named), or one of its tags, indented."""
    if row.tag:
        return f"  {row.tag}"
    return f"{row.suite} ✓" if row.ok else f"{row.suite} ✗ <{row.threshold:.0%}"


def to_json(run: Run, rows: list[Row]) -> dict[str, Any]:
    return {"run": run.id, "model": run.meta["model"], "options": run.meta["options"],
            "summary": [asdict(r) | {"ok": r.ok} for r in rows], "unfinished": unfinished(run),
            "results": run.records()}


def to_markdown(run: Run, rows: list[Row]) -> str:
    k = run.options.repeat
    lines = [f"# Eval run {run.id}", "", f"Model `{run.meta['model']}`, adapter `{run.options.adapter or 'none'}`, "
             f"split `{run.options.split}`, {k} episode(s) per case.", "",
             f"| suite | tag | cases | pass@1 | pass^{k} | judge | tokens | p50 s | unfinished |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        judge = "-" if r.judge is None else f"{r.judge:.2f}"
        lines.append(f"| {r.suite} | {r.tag} | {r.cases} | {r.pass_at_1:.1%} | {r.pass_hat_k:.1%} | {judge} | "
                     f"{r.tokens:.0f} | {r.latency_s:.1f} | {r.unfinished} |")
    skipped = unfinished(run)
    if skipped:
        lines += ["", "## Skipped or unfinished", "", *[f"- {line}" for line in skipped]]
    return "\n".join(lines) + "\n"


# -- comparing two runs ------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    suite: str
    cases: int  # cases present in both runs
    rate_a: float
    rate_b: float
    wins: int  # cases B passes more often than A
    ties: int
    losses: int
    low: float  # exact 95% interval of B - A (scenarios.stats: Clopper-Pearson over the cases that changed)
    high: float
    p: float = 1.0  # exact McNemar p, two-sided: below 0.05 exactly when the interval excludes 0
    grade_a: float = 0.0  # mean grader score (partial credit: a failed call with some arguments right scores some)
    grade_b: float = 0.0
    grade_up: int = 0  # cases whose mean grade B raised
    grade_down: int = 0

    @property
    def grade_p(self) -> float:
        """The exact two-sided sign test on the cases whose grade changed: partial credit moves before passes do."""
        return sign_p(self.grade_up, self.grade_down, "two-sided")

    @property
    def diff(self) -> float:
        return self.rate_b - self.rate_a

    @property
    def paired(self) -> Paired:
        """The exact paired test of this suite (one-sided p in either direction included)."""
        return paired(self.cases, self.wins, self.losses)


def compare(a: Run, b: Run) -> tuple[list[Comparison], list[tuple]]:
    """Per suite: pass rates over the cases both runs have, win/tie/loss, and the exact paired test and interval.

    The interval and p come from the cases that changed alone (exact McNemar; see scenarios.stats), so they
    always agree. With one episode per case the interval is that of the pass-rate difference; with several,
    of the net share of cases that improved (wins - losses) / cases.
    Also returns the cases whose pass rate changed: ``(suite, case, rate_a, rate_b)``.
    """
    records_a, records_b = a.records(), b.records()  # each run's results file read once
    rates_a, rates_b = _case_rates(records_a), _case_rates(records_b)
    grades_a, grades_b = _case_rates(records_a, _grade), _case_rates(records_b, _grade)
    comparisons, changes = [], []
    for suite in [s for s in a.meta["suites"] if s in b.meta["suites"]]:
        common = sorted(set(rates_a.get(suite, {})) & set(rates_b.get(suite, {})))
        if not common:
            continue
        pa = [rates_a[suite][c] for c in common]
        pb = [rates_b[suite][c] for c in common]
        wins = sum(y > x for x, y in zip(pa, pb, strict=True))
        losses = sum(y < x for x, y in zip(pa, pb, strict=True))
        test = paired(len(common), wins, losses)
        ga = [grades_a[suite][c] for c in common]
        gb = [grades_b[suite][c] for c in common]
        comparisons.append(Comparison(suite, len(common), _mean(pa), _mean(pb), wins, len(common) - wins - losses,
                                      losses, test.low, test.high, test.p_two_sided, _mean(ga), _mean(gb),
                                      sum(y > x for x, y in zip(ga, gb, strict=True)),
                                      sum(y < x for x, y in zip(ga, gb, strict=True))))
        changes += [(suite, c, x, y) for c, x, y in zip(common, pa, pb, strict=True) if x != y]
    return comparisons, changes


def comparison_table(a: Run, b: Run, comparisons: list[Comparison]) -> Table:
    table = Table(title=f"A = {a.id} ({a.options.adapter or 'base'})  vs  B = {b.id} ({b.options.adapter or 'base'})",
                  box=box.SIMPLE_HEAD, pad_edge=False, caption="w/t/l: cases B passes more / as often / less often; "
                  "p: exact McNemar test (two-sided) on the cases that changed; grade: mean grader score (partial "
                  "credit), up/down: cases whose grade B raised / lowered, with the exact sign test")
    table.add_column("suite", no_wrap=True, min_width=max((len(c.suite) for c in comparisons), default=5))
    for column in ("cases", "A", "B", "B - A", "95% CI", "p", "w/t/l", "grade A → B", "up/down (p)"):
        table.add_column(column, justify="right", no_wrap=True)
    for c in comparisons:
        style = "green" if c.low > 0 else "red" if c.high < 0 else ""
        diff = f"[{style}]{c.diff:+.1%}[/]" if style else f"{c.diff:+.1%}"
        table.add_row(c.suite, str(c.cases), f"{c.rate_a:.1%}", f"{c.rate_b:.1%}", diff,
                      f"[{c.low:+.1%}, {c.high:+.1%}]", p_cell(c.p), f"{c.wins}/{c.ties}/{c.losses}",
                      f"{c.grade_a:.2f} → {c.grade_b:.2f}", _grade_change(c))
    return table


def comparison_markdown(a: Run, b: Run, comparisons: list[Comparison], changes: list[tuple]) -> str:
    lines = [f"A = `{a.id}` ({a.options.adapter or 'base'}), B = `{b.id}` ({b.options.adapter or 'base'})", "",
             "| suite | cases | A | B | B - A | 95% CI | p | w/t/l | grade A → B | grade up/down (p) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c.suite} | {c.cases} | {c.rate_a:.1%} | {c.rate_b:.1%} | {c.diff:+.1%} | "
              f"[{c.low:+.1%}, {c.high:+.1%}] | {p_cell(c.p)} | {c.wins}/{c.ties}/{c.losses} | "
              f"{c.grade_a:.2f} → {c.grade_b:.2f} | {_grade_change(c)} |" for c in comparisons]
    if changes:
        lines += ["", "Cases that changed: " + ", ".join(f"{s}/{c} {x:.0%}→{y:.0%}" for s, c, x, y in changes)]
    return "\n".join(lines) + "\n"


def _grade_change(c: Comparison) -> str:
    return f"{c.grade_up}/{c.grade_down} ({p_cell(c.grade_p)})"


def changes_table(changes: list[tuple]) -> Table:
    table = Table(title="cases that changed", box=box.SIMPLE_HEAD)
    for column in ("suite", "case", "pass A", "pass B"):
        table.add_column(column, no_wrap=True)
    for suite, case, x, y in changes:
        table.add_row(suite, case, f"{x:.0%}", f"[{'green' if y > x else 'red'}]{y:.0%}[/]")
    return table


def comparison_chart(a: Run, b: Run, comparisons: list[Comparison], path: Path) -> Path:
    """A PNG bar chart of per-suite pass rates, A beside B, the 95% interval of B - A as error bars.

    The bars are named by the adapter each run answered with (base, v1, ...), the legend sits beside
    the plot rather than over the bars, and the saved figure is cropped to hold the whole title."""
    import matplotlib.pyplot as plt

    fig = chart_figure(a, b, comparisons)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def chart_figure(a: Run, b: Run, comparisons: list[Comparison]):
    """The matplotlib figure of :func:`comparison_chart`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_a, label_b = run_labels(a, b)
    names = [c.suite for c in comparisons]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 4))
    ax.bar(x - 0.2, [c.rate_a for c in comparisons], 0.4, label=label_a, color="#9aa5b1")
    errors = [[max(0.0, c.diff - c.low) for c in comparisons], [max(0.0, c.high - c.diff) for c in comparisons]]
    ax.bar(x + 0.2, [c.rate_b for c in comparisons], 0.4, yerr=errors, capsize=4, label=label_b,
           color="#2f7ed8")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pass rate (cases in both runs)")
    ax.set_title(f"strop eval: pass rate per suite, {label_a} vs {label_b}\n"
                 f"(error bars: 95% CI of {label_b} - {label_a})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    return fig


def run_labels(a: Run, b: Run) -> tuple[str, str]:
    """The runs' names in charts: the adapter each answered with ("base" for none), and the run id only
    when both answered with the same one."""
    label_a, label_b = a.options.adapter or "base", b.options.adapter or "base"
    if label_a == label_b:
        return f"{label_a} ({a.id})", f"{label_b} ({b.id})"
    return label_a, label_b


def _passed(record: dict[str, Any]) -> bool:
    return bool(record["passed"])


def _case_rates(records: list[dict[str, Any]], of=_passed) -> dict[str, dict[str, float]]:
    """Per suite and case, the mean of ``of(record)`` over the case's episodes (default: its pass rate)."""
    rates: dict[str, dict[str, float]] = {}
    for (suite, case), values in _by_case(records, with_suite=True, of=of).items():
        rates.setdefault(suite, {})[case] = _mean(values)
    return rates


def _grade(record: dict[str, Any]) -> float:
    """An episode's grade: 1 when it passed, else its graders' mean score (0 when none scored it)."""
    grades = record.get("grades") or []
    return 1.0 if record["passed"] else _mean([g.get("score", 0.0) for g in grades])


def _by_case(records: list[dict[str, Any]], with_suite: bool = False, of=_passed) -> dict[Any, list[Any]]:
    grouped: dict[Any, list[Any]] = {}
    for r in records:
        grouped.setdefault((r["suite"], r["case"]) if with_suite else r["case"], []).append(of(r))
    return grouped


def _mean(values: list[Any]) -> float:
    return float(sum(values)) / len(values) if values else 0.0

"""Saved runs, their summaries and comparisons, from synthetic episode records (no model involved)."""

import os
import random

import pytest

from strop.errors import StropError
from strop.scenarios import report
from strop.scenarios.runs import EvalOptions, RunStore


def record(suite, case, passed, repeat=0, tags=(), status=None, tokens=100, latency=1.0, grades=()):
    return {"suite": suite, "case": case, "repeat": repeat, "split": "gate", "tags": list(tags),
            "status": status or ("passed" if passed else "failed"), "passed": passed, "grades": list(grades),
            "tokens": tokens, "latency_s": latency, "error": "slow" if status == "timeout" else None}


def make_run(store, records, repeat=1, suites=("math",), threshold=0.0):
    run = store.create(EvalOptions(repeat=repeat), "model", {s: {"path": f"{s}.yaml", "threshold": threshold,
                                                                 "cases": 0, "problems": []} for s in suites})
    for r in records:
        run.append(r)
    return run


def test_results_survive_a_torn_last_line_and_runs_reopen(tmp_path):
    store = RunStore(tmp_path)
    run = make_run(store, [record("math", "a", True), record("math", "b", False)])
    with (run.dir / "results.jsonl").open("a") as fh:
        fh.write('{"suite": "math", "case": "c", "rep')  # killed mid-write
    again = store.open(run.id[:12])
    assert [r["case"] for r in again.records()] == ["a", "b"]
    assert not again.finished and again.options.repeat == 1
    assert store.open("last").id == run.id


def test_run_lookup_errors_list_known_runs(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(StropError, match="matches no run"):
        store.open("nope")
    first, second = make_run(store, []), make_run(store, [])
    with pytest.raises(StropError, match="matches several runs") as info:
        store.open(first.id[:4])
    assert second.id in info.value.fix


def test_one_process_at_a_time_adds_to_a_run(tmp_path):
    run = make_run(RunStore(tmp_path), [])
    with run.exclusive(), pytest.raises(StropError, match="another strop process"), run.exclusive():
        pass
    with run.exclusive():  # released
        pass


def test_run_meta_is_replaced_atomically(tmp_path):
    run = make_run(RunStore(tmp_path), [])
    run.meta["finished_at"] = 1.0
    run.save()
    assert RunStore(tmp_path).open(run.id).finished
    assert [p.name for p in run.dir.iterdir() if p.name.startswith(".run")] == []


def test_summary_counts_pass_at_1_pass_hat_k_tags_and_unfinished(tmp_path):
    records = [record("math", "a", True, 0, ["add"]), record("math", "a", True, 1, ["add"]),
               record("math", "b", True, 0, ["mul"]), record("math", "b", False, 1, ["mul"], status="timeout"),
               record("math", "c", False, 0, ["mul"], grades=[{"grader": "judge", "score": 0.25}]),
               record("math", "c", False, 1, ["mul"], grades=[{"grader": "judge", "score": 0.75}])]
    run = make_run(RunStore(tmp_path), records, repeat=2, threshold=0.6)
    rows = {(r.suite, r.tag): r for r in report.summarize(run)}
    whole = rows[("math", "")]
    assert (whole.cases, whole.episodes) == (3, 6)
    assert whole.pass_at_1 == pytest.approx(3 / 6) and whole.pass_hat_k == pytest.approx(1 / 3)
    assert whole.judge == pytest.approx(0.5) and whole.unfinished == 1
    assert not whole.ok  # 50% < threshold 60%
    assert rows[("math", "add")].pass_at_1 == 1.0 and rows[("math", "mul")].pass_hat_k == 0.0
    assert report.unfinished(run) == ["math/b#1: timeout: slow"]
    markdown = report.to_markdown(run, list(rows.values()))
    assert "| math |  | 3 | 50.0% | 33.3% | 0.50 |" in markdown and "math/b#1: timeout" in markdown


def test_compare_finds_a_real_improvement_and_no_change(tmp_path):
    store = RunStore(tmp_path)
    rng = random.Random(1)
    base = [record("math", f"c{i}", rng.random() < 0.3) for i in range(60)]
    better = [record("math", r["case"], r["passed"] or i % 2 == 0) for i, r in enumerate(base)]
    a, b = make_run(store, base), make_run(store, better)
    [comparison], changes = report.compare(a, b)
    assert comparison.cases == 60 and comparison.losses == 0
    assert comparison.wins == len(changes) > 0 and comparison.wins + comparison.ties == 60
    assert comparison.diff == pytest.approx(comparison.wins / 60)
    assert 0 < comparison.low < comparison.diff <= comparison.high + 1e-12  # every change a win: the far end is it
    assert comparison.p < 0.05

    [same], no_changes = report.compare(a, make_run(store, base))
    assert (same.diff, same.low, same.high, no_changes) == (0.0, 0.0, 0.0, [])


def test_compare_uses_only_cases_in_both_runs_and_draws_a_chart(tmp_path):
    store = RunStore(tmp_path)
    a = make_run(store, [record("math", "x", False), record("math", "y", True), record("rag", "q", False)],
                 suites=("math", "rag"))
    b = make_run(store, [record("math", "x", True), record("math", "z", True), record("rag", "q", True)],
                 suites=("math", "rag"))
    comparisons, changes = report.compare(a, b)
    assert [(c.suite, c.cases, c.wins) for c in comparisons] == [("math", 1, 1), ("rag", 1, 1)]
    assert sorted(changes) == [("math", "x", 0.0, 1.0), ("rag", "q", 0.0, 1.0)]
    chart = report.comparison_chart(a, b, comparisons, tmp_path / "out" / "chart.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(chart) > 5000

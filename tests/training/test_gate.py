"""The gate cannot be fooled: significant gains only, failures that are not losses, runs reused only when they
asked the same questions the same way. No model is involved: evaluation records are written by the tests."""

from pathlib import Path

import pytest

from strop.config import load_settings
from strop.scenarios.runs import EvalOptions, RunStore
from strop.scenarios.suite import Case, Suite, SuiteSpec
from strop.serving.endpoint import Endpoint
from strop.training import gate as gates
from strop.training.gate import Gate, SuiteResult, decide, simulate, verdict


def record(suite, case, passed, status=None):
    return {"suite": suite, "case": case, "repeat": 0, "passed": passed, "tags": [], "grades": [], "error": None,
            "status": status or ("passed" if passed else "failed")}


def runs(tmp_path, current, candidate):
    """Two runs from {suite: [outcome per case]}; an outcome is True, False, "timeout" or "error"."""
    store = RunStore(tmp_path)
    made = []
    for outcomes in (current, candidate):
        run = store.create(EvalOptions(), "m", {s: {"path": s} for s in outcomes})
        for suite, results in outcomes.items():
            for i, result in enumerate(results):
                status = result if isinstance(result, str) else None
                run.append(record(suite, f"c{i}", result is True, status))
        made.append(run)
    return made


def test_a_gain_that_is_not_significant_is_not_promoted(tmp_path):
    # 6 won, 1 lost of 60: +8.3 points, far above min_gain, but one-sided exact p = 8/128 = 0.0625
    current, candidate = runs(tmp_path, {"tools": [False] * 6 + [True] * 54},
                              {"tools": [True] * 6 + [False] + [True] * 53})
    result = decide(current, candidate, max_drop=0.05, min_gain=0.02)
    assert not result["promote"] and "not significant" in result["reason"]
    assert result["p"] == pytest.approx(8 / 128) and (result["wins"], result["losses"]) == (6, 1)


def test_a_significant_gain_is_promoted_and_alpha_is_the_setting(tmp_path):
    # 7 won, 1 lost: one-sided p = 9/256 = 0.035
    current, candidate = runs(tmp_path, {"tools": [False] * 7 + [True] * 53, "arithmetic": [True] * 53},
                              {"tools": [True] * 7 + [False] + [True] * 52, "arithmetic": [True] * 53})
    assert decide(current, candidate, max_drop=0.05, min_gain=0.02)["promote"]
    assert not decide(current, candidate, max_drop=0.05, min_gain=0.02, alpha=0.01)["promote"]
    assert load_settings().improve.alpha == 0.05


def test_a_suite_is_worse_when_its_own_exact_test_says_so(tmp_path):
    # math: 0 won, 6 lost of 60 (p = 1/64), within a generous max_drop; tools gains a lot
    current, candidate = runs(tmp_path, {"math": [True] * 60, "tools": [False] * 30},
                              {"math": [False] * 6 + [True] * 54, "tools": [True] * 30})
    result = decide(current, candidate, max_drop=0.2, min_gain=0.02)
    assert not result["promote"] and "worse on math" in result["reason"]


def test_episodes_that_did_not_finish_give_no_verdict(tmp_path):
    # a timeout on the active side would otherwise count as a failure: a gain made of the other side's errors
    current, candidate = runs(tmp_path, {"tools": ["timeout"] * 10 + [True] * 50}, {"tools": [True] * 60})
    result = decide(current, candidate, max_drop=0.05, min_gain=0.02)
    assert not result["promote"] and result["verdict"] is None
    assert result["reason"].startswith("no verdict") and "10 of the current side" in result["reason"]


def suite(name="math", **spec):
    return Suite(name, Path("."), SuiteSpec(name=name, **spec),
                 [Case(name, f"c{i}", f"q{i}", graders=[]) for i in range(3)])


class Display:
    def gate(self, run, cases):
        import contextlib
        return contextlib.nullcontext(None)


def test_the_gate_runs_again_what_errored_and_the_latest_try_counts(tmp_path, monkeypatch):
    settings = load_settings(state_dir=tmp_path)
    gate = Gate(settings, Endpoint("http://x/v1", "m", "k", managed=False), [suite()])
    tries = []

    def complete_run(settings, endpoint, run, suites, cases, on_episode=None, earlier=()):  # stands in for the agent
        tries.append(sorted(c.id for c in cases["math"]))
        for case in cases["math"]:
            flaky = case.id == "c1" and len(tries) == 1
            run.append(record("math", case.id, not flaky, "timeout" if flaky else None))
        run.meta["finished_at"] = 1.0
        run.save()

    monkeypatch.setattr(gates, "complete_run", complete_run)
    run = gate.run(tmp_path, "candidate", "v1", Display())
    assert tries == [["c0", "c1", "c2"], ["c1"]]  # only the timed-out case again
    assert sorted(r["status"] for r in run.records()) == ["passed"] * 3
    assert len(gates.run_ids(run)) == 2
    again = gate.run(tmp_path, "candidate", "v1", Display())  # resumed: nothing runs twice
    assert tries == [["c0", "c1", "c2"], ["c1"]] and again.records() == run.records()


def test_a_side_is_asked_where_serving_says_and_a_finished_side_starts_no_server(tmp_path, monkeypatch):
    import contextlib

    settings = load_settings(state_dir=tmp_path)
    gate = Gate(settings, Endpoint("http://x/v1", "m", "k", managed=False), [suite()])
    beside = Endpoint("http://beside/v1", "m", "k", managed=True)
    served, asked = [], []

    @contextlib.contextmanager
    def serving():  # stands in for a server started beside for the side
        served.append("started")
        yield beside
        served.append("stopped")

    def complete_run(settings, endpoint, run, suites, cases, on_episode=None, earlier=()):  # stands in for the agent
        asked.append(endpoint.base_url)
        flaky = len(asked) == 1
        for case in cases["math"]:
            run.append(record("math", case.id, True, "error" if flaky and case.id == "c2" else None))
        run.meta["finished_at"] = 1.0
        run.save()

    monkeypatch.setattr(gates, "complete_run", complete_run)
    gate.run(tmp_path, "current", None, Display(), serving)
    assert asked == ["http://beside/v1"] * 2 and served == ["started", "stopped"]  # the retry reuses the server
    gate.run(tmp_path, "current", None, Display(), serving)  # resumed after it finished: nothing to start
    assert served == ["started", "stopped"]


def test_a_round_starts_the_candidates_server_only_for_episodes_left_and_a_failed_start_promotes_nothing(
        tmp_path, monkeypatch):
    import contextlib

    from strop.errors import StropError
    from strop.training import loop

    current, candidate = runs(tmp_path / "runs", {"math": [False, True]}, {"math": [True, True]})
    started, left = [], {"candidate": False}

    @contextlib.contextmanager
    def candidate_endpoint(settings, endpoint, name, progress=None):  # stands in for merging and starting a server
        started.append(name)
        raise StropError("the candidate's server did not become healthy")
        yield endpoint

    def run(self, round_dir, role, adapter, display, serving=None):  # stands in for the gate's evaluation runs
        if role == "candidate" and left["candidate"]:
            with serving():
                pass
        return {"current": current, "candidate": candidate}[role]

    monkeypatch.setattr(loop, "candidate_endpoint", candidate_endpoint)
    monkeypatch.setattr(loop, "ensure_loaded", lambda settings, endpoint, adapter: endpoint)
    monkeypatch.setattr(gates.Gate, "run", run)
    improver = loop.Improver(load_settings(state_dir=tmp_path), Endpoint("http://x/v1", "m", "k", managed=False))
    rnd = improver.current_round()
    rnd.finish("train", {"adapter": "v1"})
    assert improver.gate(rnd)["candidate"] == "v1" and started == []  # its run had finished: no server
    left["candidate"] = True
    result = improver.gate(rnd)
    assert started == ["v1"] and result["promote"] is False and "could not be served" in result["stop"]


def test_a_baseline_is_reused_only_when_clean_and_of_the_same_content_and_sampling(tmp_path):
    from strop.scenarios.runner import start_run

    settings = load_settings(state_dir=tmp_path)
    math = suite()
    gate = Gate(settings, Endpoint("http://x/v1", "m", "k", managed=False), [math])

    def baseline(the_suite, status=None):
        run = start_run(gate.store, "m", EvalOptions(adapter="v1"), [the_suite], {"math": the_suite.cases})
        for case in the_suite.cases:
            run.append(record("math", case.id, True, status if case.id == "c0" else None))
        run.meta["finished_at"] = 1.0
        run.save()
        return run

    wanted = baseline(math)
    baseline(math, status="timeout")  # newer, but a timeout: never reused
    baseline(suite(defaults={"sampling": {"temperature": 0.7}}))  # other sampling
    other = suite()
    other.cases[0] = Case("math", "c0", "a different question", graders=[])
    baseline(other)  # same ids, other content
    assert gate.earlier_run("v1").id == wanted.id


def test_simulated_rounds_of_an_equivalent_candidate_rarely_promote_and_a_real_gain_mostly_does():
    for flip in (0.3, None):  # 30% of the cases flip, or every case is drawn afresh on both sides
        null = simulate(rounds=1000, cases=(8, 60), gain=0.0, flip=flip, seed=1)
        assert null["promotion_rate"] <= 0.05
        assert null["mean_cases_flipped"] > 5  # cases do flip: the rule, not a quiet simulation, keeps it low
    power = simulate(rounds=1000, cases=(60, 60), gain=0.15, flip=0.3, seed=1)
    assert power["promotion_rate"] > 0.5


def test_the_old_rule_would_have_promoted_noise_often():
    """The simulation can tell rules apart: a point gain of 2% alone promotes an equivalent candidate often."""
    results = [SuiteResult("s", 30, 9, 7, 0.5, 0.5 + 2 / 30)]
    assert not verdict(results, max_drop=0.05, min_gain=0.02)["promote"]  # +6.7 points, p = 0.40

"""A round draws more train cases for a suite whose prompts were mostly uninformative (all episodes alike), as many
as the share found says are needed (by the rule of succession), within ``draw_factor``. No model is involved."""

import json

import pytest

from strop.config import load_settings
from strop.errors import StropError
from strop.scenarios.suite import load_suite
from strop.serving.endpoint import Endpoint
from strop.training import loop
from strop.training.loop import Improver
from strop.trajectories import Trajectory

ENDPOINT = Endpoint("http://x/v1", "m", "k", managed=False)


def suite_file(tmp_path, name="sums"):
    rows = [f"  - {{id: c{i}, input: 'What is {i} + {name}?', expect: {{numeric: {i + 1}}}}}" for i in range(300)]
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntrain_fraction: 0.5\ntest_fraction: 0.2\ncases:\n" + "\n".join(rows) + "\n")
    return path


def stand_in_evaluator(store, informative, failed_credit=0.0):
    class Scripted:  # stands in for the agent: a case in ``informative`` passes on even k only (else earns
        # ``failed_credit``), any other always
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def prepare(self, suite):
            pass

        async def episode(self, suite, case, k):
            passed = k % 2 == 0 or not informative(case.id)
            trajectory = Trajectory(prompt=case.input, messages=[], status="answered", answer="x")
            store.append(trajectory)
            return {"suite": suite.name, "case": case.id, "repeat": k, "status": "passed" if passed else "failed",
                    "passed": passed, "grades": [{"score": 1.0 if passed else failed_credit}],
                    "trajectory": trajectory.id}

    return Scripted


class GateRun:  # stands in for the gate's current side: the episode records it would hold
    def __init__(self, records):
        self._records = records

    def records(self):
        return self._records


def rollouts(tmp_path, monkeypatch, informative, draw_factor=3.0, suites=("sums",), gate=(), failed_credit=0.0,
             pass_over_fail=False):
    paths = [suite_file(tmp_path, name) for name in suites]
    settings = load_settings(state_dir=tmp_path / "state").model_copy(deep=True)
    imp_settings = settings.improve
    imp_settings.suites = [str(path) for path in paths]
    imp_settings.prompts_per_suite, imp_settings.draw_factor = 6, draw_factor
    imp_settings.chat_prompts = imp_settings.synthetic_prompts = 0
    imp_settings.samples, imp_settings.skip_solved = 2, True
    imp_settings.pass_over_fail = pass_over_fail
    imp = Improver(settings, ENDPOINT)
    monkeypatch.setattr(imp, "current_gate_run", lambda rnd: GateRun(list(gate)))
    monkeypatch.setattr(loop, "Evaluator", stand_in_evaluator(imp.store, informative, failed_credit))
    monkeypatch.setattr(loop, "ensure_loaded", lambda settings, endpoint, adapter: endpoint)
    rnd = imp.current_round()
    rnd.finish("prompts", imp.collect_prompts(rnd))
    return imp, rnd, imp.rollouts(rnd), load_suite(paths[0])


def every_third(case_id: str) -> bool:
    return int(case_id[1:]) % 3 == 0


def test_a_suite_with_few_informative_prompts_draws_more_within_the_factor(tmp_path, monkeypatch):
    imp, rnd, result, suite = rollouts(tmp_path, monkeypatch, every_third)
    name = str(tmp_path / "sums.yaml")
    prompts = imp.prompts(rnd)
    cases = [p.case for p in prompts]
    assert len(cases) == len(set(cases)) == result["drawn"][name] > 6  # more were drawn, none twice
    assert result["drawn"][name] <= 18  # draw_factor 3 x 6
    splits = {c.id: c.split for c in suite.cases}
    assert {splits[c] for c in cases} == {"train"}
    assert result["informative"][name] == sum(every_third(c) for c in cases)
    assert result["episodes"] == 2 * len(cases) == len(rnd.lines("rollouts.jsonl"))
    again = imp.rollouts(rnd)  # resumed: nothing more to run or draw
    assert again == result and imp.prompts(rnd) == prompts


def test_a_suite_with_none_informative_draws_up_to_the_factor_and_no_further(tmp_path, monkeypatch):
    imp, rnd, result, _suite = rollouts(tmp_path, monkeypatch, lambda _case: False)
    assert list(result["drawn"].values()) == [18]  # draw_factor 3 x 6: none found is an estimate, not a verdict
    assert list(result["informative"].values()) == [0]
    assert imp.rollouts(rnd) == result  # resumed at the limit: nothing more drawn


def test_no_more_draws_when_the_factor_is_one(tmp_path, monkeypatch):
    _imp, _rnd, result, _suite = rollouts(tmp_path, monkeypatch, every_third, draw_factor=1.0)
    assert list(result["drawn"].values()) == [6]


def test_a_suite_with_enough_informative_prompts_draws_once(tmp_path, monkeypatch):
    _imp, rnd, result, _suite = rollouts(tmp_path, monkeypatch, lambda _case: True)
    assert list(result["drawn"].values()) == list(result["informative"].values()) == [6]
    assert json.loads((rnd.dir / "prompts.done").read_text())["prompts"] == 6


def test_a_pass_beside_a_near_miss_counts_as_informative_with_pass_over_fail(tmp_path, monkeypatch):
    for pass_over_fail, found in ((True, [6]), (False, [0])):
        (tmp_path / str(pass_over_fail)).mkdir()
        _imp, _rnd, result, _suite = rollouts(tmp_path / str(pass_over_fail), monkeypatch, lambda _case: True,
                                              failed_credit=0.8, pass_over_fail=pass_over_fail)
        assert list(result["informative"].values()) == found  # a failure with 0.8 partial credit is within the margin


def test_rollouts_start_the_cases_that_ran_longest_before_first(tmp_path, monkeypatch):
    from strop.scenarios.runs import EvalOptions, RunStore

    path = suite_file(tmp_path)
    settings = load_settings(state_dir=tmp_path / "state").model_copy(deep=True)
    settings.improve.suites, settings.improve.prompts_per_suite, settings.improve.draw_factor = [str(path)], 6, 1.0
    settings.improve.chat_prompts = settings.improve.synthetic_prompts = 0
    settings.improve.samples = 2
    imp = Improver(settings, ENDPOINT)
    started = []
    scripted = stand_in_evaluator(imp.store, lambda _case: False)

    class Noting(scripted):
        async def episode(self, suite, case, k):
            started.append(case.id)
            return await super().episode(suite, case, k)

    monkeypatch.setattr(loop, "Evaluator", Noting)
    monkeypatch.setattr(loop, "ensure_loaded", lambda settings, endpoint, adapter: endpoint)
    rnd = imp.current_round()
    rnd.finish("prompts", imp.collect_prompts(rnd))
    cases = [p.case for p in imp.prompts(rnd)]
    earlier = RunStore(settings.eval_dir).create(EvalOptions(), "m", {})  # an evaluation that timed each case
    for index, case in enumerate(cases):
        earlier.append({"suite": "sums", "case": case, "latency_s": float(index)})
    imp.rollouts(rnd)
    assert started == [case for case in reversed(cases) for _k in range(2)]


def test_a_suite_whose_gate_cases_all_pass_draws_no_prompts(tmp_path, monkeypatch):
    gate = [{"suite": "sums", "case": "g1", "passed": True}, {"suite": "sums", "case": "g2", "passed": True},
            {"suite": "subs", "case": "g1", "passed": True}, {"suite": "subs", "case": "g2", "passed": False,
                                                                "status": "error"}]
    imp, rnd, result, _suite = rollouts(tmp_path, monkeypatch, lambda _case: False, suites=("sums", "subs"),
                                        gate=gate)
    sums, subs = imp.settings.improve.suites
    assert rnd.result("prompts")["solved"] == [sums]
    assert result["drawn"] == {sums: 0, subs: 18}  # none at first, none among the further draws
    assert {p.suite for p in imp.prompts(rnd)} == {subs}


def test_a_round_whose_every_suite_is_solved_stops_before_the_rollouts(tmp_path, monkeypatch):
    path = suite_file(tmp_path)
    settings = load_settings(state_dir=tmp_path / "state").model_copy(deep=True)
    settings.improve.suites, settings.improve.chat_prompts, settings.improve.synthetic_prompts = [str(path)], 0, 0
    settings.improve.skip_solved = True
    imp = Improver(settings, ENDPOINT)
    monkeypatch.setattr(imp, "current_gate_run", lambda rnd: GateRun([{"suite": "sums", "passed": True}]))
    monkeypatch.setattr(loop, "ensure_loaded", lambda settings, endpoint, adapter: endpoint)
    report = imp.run_round()
    assert report["prompts"]["prompts"] == 0 and "passes every gate case of" in report["prompts"]["stop"]
    assert report["rollouts"] == report["promote"] == {"skipped": report["prompts"]["stop"]}


def test_skip_solved_off_draws_from_every_suite_without_asking_the_gate(tmp_path, monkeypatch):
    settings = load_settings(state_dir=tmp_path / "state").model_copy(deep=True)
    settings.improve.suites, settings.improve.prompts_per_suite = [str(suite_file(tmp_path))], 6
    settings.improve.chat_prompts = settings.improve.synthetic_prompts = 0
    assert settings.improve.skip_solved is False  # the default
    imp = Improver(settings, ENDPOINT)
    monkeypatch.setattr(imp, "current_gate_run", lambda rnd: pytest.fail("the gate was asked"))
    result = imp.collect_prompts(imp.current_round())
    assert result["solved"] == [] and result["prompts"] == 6


def test_a_suite_left_without_cases_by_a_missing_data_file_stops_the_round_with_the_file(tmp_path):
    path = tmp_path / "gone.yaml"
    path.write_text("name: gone\ndata:\n  - {path: nowhere.jsonl, input: '{q}', expect: {numeric: '{a}'}}\n")
    settings = load_settings(state_dir=tmp_path / "state").model_copy(deep=True)
    settings.improve.suites = [str(path)]
    imp = Improver(settings, ENDPOINT)
    with pytest.raises(StropError, match=r"Suite .*gone.yaml has no cases: .*gone.yaml:\d+: data file nowhere.jsonl"):
        imp.collect_prompts(imp.current_round())

"""The round's decisions: episode scores, the gate verdict and stage checkpoints (no model involved)."""

import json
import os

import pytest

from strop.scenarios.runs import EvalOptions, RunStore
from strop.training.critic import score_episode
from strop.training.gate import decide
from strop.training.loop import STAGES, Round
from strop.training.sources import Prompt
from strop.trajectories import StepTiming, Trajectory


def trajectory(status="answered", tool_names=(), answer="36", errors=0):
    messages = [{"role": "user", "content": "q"}]
    messages += [{"role": "tool", "name": name, "content": "..."} for name in tool_names]
    steps = [StepTiming("tool", "calculator", 1.0, error="Error: bad") for _ in range(errors)]
    return Trajectory(prompt="q", messages=messages, status=status, answer=answer, steps=steps)


@pytest.mark.parametrize(("record", "run", "score"), [
    ({"passed": True}, trajectory(), 1.0),
    ({"passed": False}, trajectory(), 0.0),
    ({"passed": False, "grades": [{"score": 0.6}, {"score": 0.0}]}, trajectory(), 0.3),  # partial credit
    ({"passed": True}, trajectory(tool_names=["invalid_action"]), 0.9),
    ({"passed": True}, trajectory(errors=2), 0.9),
    ({"passed": True}, trajectory(status="budget_exhausted"), 0.75),
    ({"status": "timeout"}, trajectory(), None),
    ({"passed": False}, trajectory(status="error"), None),
])
def test_episode_scores(record, run, score):
    got, why = score_episode(record, run)
    assert got == (pytest.approx(score) if score is not None else None) and why


def gate_runs(tmp_path, current, candidate):
    store = RunStore(tmp_path)
    runs = []
    for outcomes in (current, candidate):
        run = store.create(EvalOptions(), "m", {s: {"path": s} for s in outcomes})
        for suite, passes in outcomes.items():
            for i, passed in enumerate(passes):
                run.append({"suite": suite, "case": f"c{i}", "repeat": 0, "passed": passed, "tags": [],
                            "status": "passed" if passed else "failed", "grades": []})
        runs.append(run)
    return runs


def test_the_gate_promotes_a_clear_gain_without_regressions(tmp_path):
    current, candidate = gate_runs(tmp_path, {"math": [0] * 10 + [1] * 10, "tools": [1, 0] * 10},
                                   {"math": [1] * 18 + [0] * 2, "tools": [1, 0] * 10})
    verdict = decide(current, candidate, max_drop=0.05, min_gain=0.02)
    assert verdict["promote"] and verdict["gain"] == pytest.approx(0.2)
    assert {s["suite"]: s["diff"] for s in verdict["suites"]} == {"math": pytest.approx(0.4), "tools": 0.0}


def test_the_gate_refuses_a_regression_even_with_a_pooled_gain(tmp_path):
    current, candidate = gate_runs(tmp_path, {"math": [0] * 20, "tools": [1] * 20},
                                   {"math": [1] * 20, "tools": [1] * 17 + [0] * 3})
    verdict = decide(current, candidate, max_drop=0.05, min_gain=0.02)
    assert not verdict["promote"] and "worse on tools" in verdict["reason"]


def test_the_gate_refuses_a_gain_below_the_margin(tmp_path):
    # significant (6 won, 0 lost: p = 1/64) but only +1.5 points
    current, candidate = gate_runs(tmp_path, {"math": [0] * 6 + [1] * 394}, {"math": [1] * 400})
    verdict = decide(current, candidate, max_drop=0.05, min_gain=0.02)
    assert not verdict["promote"] and "below improve.min_gain" in verdict["reason"]


def test_stage_checkpoints_and_torn_appends(tmp_path):
    rnd = Round(tmp_path / "round-0003")
    rnd.dir.mkdir()
    assert rnd.number == 3 and not rnd.done("prompts")
    rnd.finish("prompts", {"prompts": 4})
    assert rnd.done("prompts") and rnd.result("prompts") == {"prompts": 4}
    rnd.append("rollouts.jsonl", {"prompt": "a", "k": 0})
    with (rnd.dir / "rollouts.jsonl").open("a") as fh:
        fh.write('{"prompt": "a", "k"')
    assert rnd.lines("rollouts.jsonl") == [{"prompt": "a", "k": 0}]
    for stage in STAGES:
        rnd.finish(stage, {})
    assert rnd.finished and not list(rnd.dir.glob(".*.tmp"))
    assert json.loads((rnd.dir / "promote.done").read_text()) == {}


def test_stage_minutes_come_from_the_checkpoints_times(tmp_path):
    rnd = Round(tmp_path / "round-0001")
    rnd.dir.mkdir()
    for name, minute in (("prompts.jsonl", 0), ("prompts.done", 0.5), ("rollouts.done", 11), ("train.done", 17)):
        (rnd.dir / name).write_text("{}")
        os.utime(rnd.dir / name, (minute * 60, minute * 60))
    assert rnd.stage_minutes() == {"prompts": 0.5, "rollouts": 10.5, "train": 6.0}
    assert rnd.stage_minutes(began=12 * 60) == {"train": 5.0}  # only what ran after a resume


def test_the_gate_reuses_a_finished_run_of_the_current_adapter_on_the_same_cases(tmp_path):
    from strop.config import load_settings
    from strop.scenarios.suite import Case
    from strop.serving.endpoint import Endpoint
    from strop.training.gate import Gate

    gate = Gate(load_settings(state_dir=tmp_path), Endpoint("http://x/v1", "m", "k", managed=False), [])
    store = gate.store
    gate.cases = {"math": [Case("math", f"c{i}", "q", graders=[]) for i in range(2)]}

    def run(adapter, case_ids, status="passed", finished=True, model="m"):
        made = store.create(EvalOptions(adapter=adapter), model, {"math": {}})  # no suites: no content to check
        for case in case_ids:
            made.append({"suite": "math", "case": case, "status": status, "passed": status == "passed"})
        made.meta["finished_at"] = 1.0 if finished else None
        made.save()
        return made

    assert gate.earlier_run("v1") is None
    wanted = run("v1", ["c0", "c1"])
    for adapter, case_ids, extra in [("v2", ["c0", "c1"], {}), ("v1", ["c0"], {}), ("v1", ["c0", "c1", "c2"], {}),
                                     ("v1", ["c0", "c1"], {"status": "error"}),
                                     ("v1", ["c0", "c1"], {"finished": False}), ("v1", ["c0", "c1"], {"model": "o"})]:
        run(adapter, case_ids, **extra)  # newer, but not the same adapter, cases, model, or not clean
    assert gate.earlier_run("v1").id == wanted.id


def test_the_judge_only_compares_episodes_the_checks_leave_tied():
    import asyncio

    from strop.training.critic import judged_preferences

    asked = []

    async def compare(question, a, b):  # stands in for LLMJudge.compare: prefers answers naming Paris
        asked.append((a, b))
        return 0.5 + 0.4 * (("Paris" in a) - ("Paris" in b))

    episodes = [("a", "Paris", 0.5), ("b", "London", 0.5), ("c", "paris.", 0.5), ("d", "Lyon", 1.0)]
    preference = asyncio.run(judged_preferences("Capital of France?", episodes, compare, min_margin=0.5))
    assert sorted(asked) == [("London", "paris."), ("Paris", "London")]  # same answers and clear scores skipped
    assert preference == {"a": pytest.approx(0.9), "b": pytest.approx(0.3), "c": pytest.approx(0.5)}


def test_the_judge_moves_scores_by_its_weight(tmp_path):
    from strop.config import CriticSettings, load_settings
    from strop.serving.endpoint import Endpoint
    from strop.training.critic import Critic

    settings = load_settings(state_dir=tmp_path, critic=CriticSettings(judge_weight=0.6))
    critic = Critic(settings, Endpoint("http://x/v1", "m", "k", managed=False), store=None)
    rnd = Round(tmp_path / "round-0001")
    for trajectory, score in [("a", 0.5), ("b", 0.5), ("c", 0.9), ("d", None)]:
        rnd.append("scores.jsonl", {"prompt": "p", "trajectory": trajectory, "score": score})
    rnd.append("judged.jsonl", {"prompt": "p", "preference": {"a": 0.9, "b": 0.1, "c": 1.0}})
    scores = {row["trajectory"]: row["score"] for row in critic.scores(rnd)}
    assert scores == {"a": pytest.approx(0.74), "b": pytest.approx(0.26), "c": 1.0, "d": None}
    assert critic.version.endswith("+judge-0.6")


def test_the_pairwise_judge_writes_one_line_per_tied_prompt_and_skips_judged_ones(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from strop.config import CriticSettings, load_settings
    from strop.serving.endpoint import Endpoint
    from strop.training.critic import Critic
    from strop.trajectories import Trajectory, TrajectoryStore

    class Judge:  # stands in for LLMJudge: prefers the answer naming Paris, records nothing else
        def __init__(self, *args, **kwargs): ...

        async def compare(self, question, a, b):
            return SimpleNamespace(p_a=0.9 if "Paris" in a else 0.1)

        async def close(self): ...

    monkeypatch.setattr("strop.scenarios.judge.LLMJudge", Judge)
    monkeypatch.setattr("strop.serving.endpoint.judge_endpoint", lambda settings, endpoint: endpoint)
    settings = load_settings(state_dir=tmp_path, critic=CriticSettings(judge_weight=0.5, judge_mode="pairwise"))
    store = TrajectoryStore(settings.trajectories_path)
    rnd = Round(tmp_path / "round-0001")
    for prompt, answer in [("p", "Paris"), ("p", "Lyon"), ("q", "4"), ("q", "5")]:
        t = Trajectory("Capital of France?", [], "answered", answer=answer)
        store.append(t)
        rnd.append("scores.jsonl", {"prompt": prompt, "trajectory": t.id, "score": 0.5})
    rnd.append("judged.jsonl", {"prompt": "q", "preference": {}})  # judged before a kill: not asked again
    prompts = {"p": Prompt("p", "chat", "Capital of France?"), "q": Prompt("q", "chat", "2 + 2?")}
    critic = Critic(settings, Endpoint("http://x/v1", "m", "k", managed=False), store)
    assert critic.judge_ties(rnd, prompts) == 2
    (line,) = [row for row in rnd.lines("judged.jsonl") if row["prompt"] == "p"]
    assert sorted(line["preference"].values()) == [pytest.approx(0.1), pytest.approx(0.9)]

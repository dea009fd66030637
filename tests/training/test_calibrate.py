"""`strop critic calibrate --against-gold`: the label-free critic's pairs checked by the graders (no model: the
episodes are written as the rollouts would have logged them)."""

import json
import textwrap

import pytest

from strop.config import Settings
from strop.scenarios.suite import load_suite
from strop.training.calibrate import episodes_file, gold_score, measure, sample_episodes, train_cases
from strop.trajectories import StepTiming, Trajectory, TrajectoryStore


def suite_of(tmp_path, n=3):
    cases = "\n".join(f'  - {{id: c{i}, input: "What is {i} plus 1?", expect: {{numeric: {i + 1}}}, split: train}}'
                      for i in range(n))
    path = tmp_path / "mini.yaml"
    path.write_text(textwrap.dedent("""\
        name: mini
        defaults: {tools: [calculator]}
        cases:
        """) + cases + "\n  - {id: g, input: 'What is 9 plus 9?', expect: {numeric: 18}}\n")
    return load_suite(path)


def logged(store, question, answer, passed, case, k):
    """An episode as the evaluator records it, with its trajectory in the store."""
    args = json.dumps({"answer": answer, "sources": []})
    run = Trajectory(prompt=question, status="answered", answer=answer, steps=[StepTiming("model", "m", 1.0)],
                     messages=[
        {"role": "user", "content": question},
        {"role": "assistant", "content": args, "tool_calls": [
            {"type": "function", "id": "c", "function": {"name": "final_answer", "arguments": args}}]}])
    store.append(run)
    return {"case": case, "repeat": k, "trajectory": run.id, "passed": passed, "status": "passed" if passed else
            "failed", "grades": [{"score": float(passed)}]}


def test_train_cases_are_a_seeded_sample_of_the_train_split(tmp_path):
    suite = suite_of(tmp_path, n=6)
    chosen = train_cases(suite, 4, seed=1)
    assert len(chosen) == 4 and all(c.split == "train" for c in chosen)
    assert [c.id for c in chosen] == [c.id for c in train_cases(suite, 4, seed=1)]


@pytest.mark.parametrize(("record", "score"), [
    ({"passed": True}, 1.0), ({"passed": False, "grades": [{"score": 0.5}, {"score": 0.0}]}, 0.25),
    ({"status": "error"}, 0.0)])
def test_gold_score(record, score):
    assert gold_score(record) == score


def test_pair_accuracy_and_coverage_come_from_the_graders(tmp_path):
    suite = suite_of(tmp_path)
    store = TrajectoryStore(tmp_path / "t.sqlite")
    c0, c1, c2 = suite.select("train")
    records = [  # c0: the majority is right; c1: the majority is wrong; c2: no majority
        *(logged(store, c0.input, a, a == "1", "c0", k) for k, a in enumerate(["1", "1", "1", "5"])),
        *(logged(store, c1.input, a, a == "2", "c1", k) for k, a in enumerate(["3", "3", "2", "7"])),
        *(logged(store, c2.input, a, a == "3", "c2", k) for k, a in enumerate(["3", "3", "4", "4"])),
    ]
    figures = measure(Settings(state_dir=tmp_path), store, suite, [c0, c1, c2], records)
    # c0: one right pair; c1: one wrong pair (3 over 2) and one the graders cannot order (3 over 7: both fail)
    assert (figures["pairs"], figures["agree"], figures["disagree"], figures["gold_ties"]) == (3, 1, 1, 1)
    assert figures["pair_accuracy"] == 0.5 and figures["agree_share"] == pytest.approx(1 / 3)
    assert figures["covered"] == 2
    assert figures["coverage"] == pytest.approx(2 / 3) and figures["gold_mixed"] == 3
    assert figures["verdicts"]["majority"] == 2 and figures["verdicts"]["no_majority"] == 1
    low, high = figures["ci95"]
    assert low < 0.5 < high
    capped = Settings(state_dir=tmp_path).model_copy(deep=True)
    capped.improve.pairs_per_prompt = 1  # the pairs a round so configured makes
    one = measure(capped, store, suite, [c0, c1, c2], records)
    assert (one["pairs"], one["covered"]) == (2, 2)


def test_an_all_errored_case_counts_as_uncovered_not_a_crash(tmp_path):
    suite = suite_of(tmp_path, n=1)
    case = suite.select("train")[0]
    records = [{"case": case.id, "repeat": k, "status": "error", "error": "boom"} for k in range(4)]
    figures = measure(Settings(state_dir=tmp_path), TrajectoryStore(tmp_path / "t.sqlite"), suite, [case], records)
    assert figures["pairs"] == 0 and figures["pair_accuracy"] is None and figures["coverage"] == 0
    assert figures["verdicts"]["all_errored"] == 1


def test_sampled_episodes_are_reused_not_sampled_again(tmp_path):
    settings = Settings(state_dir=tmp_path)
    suite = suite_of(tmp_path, n=2)
    cases = suite.select("train")
    path = episodes_file(settings, "mini", 0.7)
    path.parent.mkdir(parents=True)
    kept = [{"case": c.id, "repeat": k, "trajectory": None, "passed": False} for c in cases for k in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    def endpoint():
        raise AssertionError("nothing is left to sample: no server is asked for")

    got = sample_episodes(settings, endpoint, TrajectoryStore(tmp_path / "t.sqlite"), suite, cases, 2, 0.7)
    assert sorted((r["case"], r["repeat"]) for r in got) == [("c0", 0), ("c0", 1), ("c1", 0), ("c1", 1)]


def test_episodes_that_failed_to_run_are_sampled_again(tmp_path):
    settings = Settings(state_dir=tmp_path)
    suite = suite_of(tmp_path, n=1)
    cases = suite.select("train")
    path = episodes_file(settings, "mini", 1.0)
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"case": "c0", "repeat": k, "status": "error", "error": "connection"}) + "\n"
                            for k in range(2)))
    got = sample_episodes(settings, lambda: None, TrajectoryStore(tmp_path / "t.sqlite"), suite, cases, 2, 1.0)
    # without a server each one fails again and is recorded so; the newest record of each episode is returned
    assert len(got) == 2 and all(r["status"] == "error" for r in got)
    assert len(path.read_text().splitlines()) == 4

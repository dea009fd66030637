"""`strop history` reports the active adapter's pass rate on the held-out test split beside its gate pass rate."""

import json

from strop.config import load_settings
from strop.scenarios.runs import EvalOptions, RunStore
from strop.training.history import held_out, latest_test_run, round_rows


def gate_round(settings, number, current, candidate, rates):
    folder = settings.improve_dir / f"round-{number:04d}"
    folder.mkdir(parents=True)
    suites = [{"suite": "tools", "current": rates[0], "candidate": rates[1], "diff": rates[1] - rates[0],
               "ci": [0, 0], "cases": 40}]
    (folder / "train.done").write_text(json.dumps({"adapter": candidate}))
    (folder / "gate.done").write_text(json.dumps({"promote": True, "current": current, "candidate": candidate,
                                                  "suites": suites}))


def eval_run(settings, adapter, outcomes, split="test", status=None):
    run = RunStore(settings.eval_dir).create(EvalOptions(adapter=adapter, split=split), "m", {"tools": {}})
    for i, passed in enumerate(outcomes):
        run.append({"suite": "tools", "case": f"t{i}", "repeat": 0, "split": split, "passed": passed,
                    "status": status or ("passed" if passed else "failed")})
    run.meta["finished_at"] = 1.0
    run.save()
    return run


def test_the_test_rate_stands_beside_the_gate_rate(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    gate_round(settings, 1, None, "v1", (0.25, 0.40))
    rows = round_rows(settings)
    assert rows[0].current is None and rows[0].adapter == "v1"
    assert "not evaluated yet" in held_out(settings, "v1", rows).line()
    eval_run(settings, "v1", [True, False, False, False], status="timeout")  # unfinished: not a measure
    eval_run(settings, "v1", [True] * 8, split="gate")  # a gate run is not the test split
    wanted = eval_run(settings, "v1", [True, True, False, False])
    assert latest_test_run(settings, "v1").id == wanted.id
    held = held_out(settings, "v1", rows)
    assert (held.gate, held.gate_round, held.test, held.test_cases) == (0.40, 1, 0.5, 4)
    assert "gate 40.0% (round 1)" in held.line() and "test 50.0% on 4 held-out cases" in held.line()
    assert held_out(settings, None, rows).gate == 0.25  # the base model: the round's current side


def test_the_test_split_is_evaluated_once_per_adapter_and_only_its_cases(tmp_path, monkeypatch):
    from strop.scenarios import runner
    from strop.serving.endpoint import Endpoint
    from strop.training.history import evaluate_test

    rows = [f"  - {{id: c{i}, input: 'What is {i} + 1?', expect: {{numeric: {i + 1}}}}}" for i in range(60)]
    path = tmp_path / "sums.yaml"
    path.write_text("name: sums\ntrain_fraction: 0.5\ntest_fraction: 0.2\ncases:\n" + "\n".join(rows) + "\n")
    settings = load_settings(state_dir=tmp_path).model_copy(deep=True)
    settings.improve.suites = [str(path)]
    evaluated = []

    def complete_run(settings, endpoint, run, suites, cases, on_episode=None, earlier=()):  # stands in for the agent
        evaluated.append([c.split for c in cases["sums"]])
        for case in cases["sums"]:
            run.append({"suite": "sums", "case": case.id, "repeat": 0, "split": case.split, "passed": True,
                        "status": "passed"})
        run.meta["finished_at"] = 1.0
        run.save()

    monkeypatch.setattr(runner, "complete_run", complete_run)
    endpoint = Endpoint("http://x/v1", "m", "k", managed=False)
    first = evaluate_test(settings, endpoint, "v1")
    assert evaluate_test(settings, endpoint, "v1").id == first.id and len(evaluated) == 1  # reused
    assert evaluated[0] and set(evaluated[0]) == {"test"}
    assert held_out(settings, "v1").test == 1.0
    first.append({"suite": "sums", "case": "c0", "repeat": 0, "split": "test", "passed": False, "status": "error"})
    assert evaluate_test(settings, endpoint, "v1").id != first.id and len(evaluated) == 2  # an errored run is not


def test_the_demo_tests_the_active_adapter_where_it_is_served_now(tmp_path, monkeypatch):
    """A promotion swaps the server: the test split goes to the new one, not the endpoint the demo started with."""
    from strop import demo
    from strop.serving import policy
    from strop.serving.endpoint import Endpoint
    from strop.training import history

    old, new = Endpoint("http://old/v1", "m", "k", managed=True), Endpoint("http://new/v1", "m1", "k", managed=True)
    asked = []
    monkeypatch.setattr(policy, "ensure_loaded", lambda settings, endpoint, adapter: new)  # the server record now
    monkeypatch.setattr(history, "evaluate_test", lambda settings, endpoint, adapter: asked.append((endpoint, adapter)))
    demo.test_split(load_settings(state_dir=tmp_path), old, "v1")
    assert asked == [(new, "v1")]

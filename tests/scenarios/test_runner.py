"""The evaluator: agents per suite and case, grading, timeouts, failures and resuming.

A scripted chat model (tests/agents/conftest.py) stands in for vLLM: it replays action texts, so these
tests check what strop does with the model's actions. tests/integration runs suites on the real server.
"""

import asyncio
import json
import textwrap
import time

import httpx
import openai
import pytest

from strop.agents.agent import Agent
from strop.config import load_settings
from strop.scenarios.runner import Evaluator, outcome_of
from strop.scenarios.runs import EvalOptions, RunStore, expected_seconds
from strop.scenarios.suite import load_suite
from strop.serving.endpoint import Endpoint
from strop.trajectories import TrajectoryStore
from tests.agents.conftest import ScriptedModel


def action(tool, **args):
    return json.dumps({"tool": tool, "args": args})


class ScriptedEvaluator(Evaluator):
    """An evaluator whose agents get a scripted model per case input (``replies[input]``)."""

    def __init__(self, settings, replies, delay_s=0.0, **kwargs):
        super().__init__(settings, Endpoint("http://unused/v1", "scripted", "EMPTY", False), **kwargs)
        self.replies, self.delay_s, self.built = replies, delay_s, []

    def make_agent(self, settings, tools, sampling):
        self.built.append((settings, [t.name for t in tools]))
        evaluator = self

        class PerInput(ScriptedModel):
            def _next(self, messages, kwargs):
                time.sleep(evaluator.delay_s)
                asked = max(i for i, m in enumerate(messages) if m.type == "human")
                script = evaluator.replies[messages[asked].content]
                step = sum(m.type == "tool" for m in messages[asked:])  # actions taken so far
                reply = script[min(step, len(script) - 1)]
                if isinstance(reply, Exception):
                    raise reply
                return reply

        return Agent(settings, PerInput(replies=["unused"]), tools, model_name="scripted", store=self.store,
                     sampling=sampling)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_STATE_DIR", str(tmp_path))
    return load_settings()


def suite_file(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return load_suite(path)


MATH = """
    name: math
    defaults: {tools: [calculator], max_steps: 3, min_tool_steps: 1}
    cases:
      - {id: mul, input: "What is 12 * 3?", expect: {numeric: 36}, tags: [mul]}
      - {id: add, input: "What is 2 + 2?", expect: {numeric: 4}}
      - id: call
        input: "Hypotenuse of 3 and 4?"
        functions: [{name: math.hypot, description: Euclidean norm, parameters: {type: dict,
                     properties: {x: {type: integer}, y: {type: integer}}, required: [x, y]}}]
        expect: {tool_call: [{math.hypot: {x: [3], y: [4]}}]}
"""
REPLIES = {
    "What is 12 * 3?": [action("calculator", expression="12 * 3"), action("final_answer", answer="36", sources=[])],
    "What is 2 + 2?": [action("calculator", expression="2 + 2"), action("final_answer", answer="5", sources=[])],
    "Hypotenuse of 3 and 4?": [action("math_hypot", x=3, y=4), action("final_answer", answer="5", sources=[])],
}


def test_cases_run_grade_and_link_their_trajectories(settings, tmp_path):
    suite = suite_file(tmp_path, MATH)
    store = TrajectoryStore(settings.trajectories_path)
    evaluator = ScriptedEvaluator(settings, REPLIES, store=store)
    records = {c.id: asyncio.run(evaluator.episode(suite, c)) for c in suite.cases}
    assert records["mul"]["status"] == "passed" and records["mul"]["answer"] == "36"
    assert records["add"]["status"] == "failed" and "expected 4, got 5" in records["add"]["grades"][0]["detail"]
    assert records["call"]["status"] == "passed"
    trajectory = store.get(records["mul"]["trajectory"])
    assert (trajectory.scenario, trajectory.case_id) == ("math", "mul")
    assert records["mul"]["steps"] == 2 and records["mul"]["tokens"] > 0
    # the suite's tools, the case's declared function before final_answer; the suite's budget and namespace
    tool_sets = sorted(names for _, names in evaluator.built)
    assert tool_sets == [["calculator", "final_answer"], ["calculator", "math_hypot", "final_answer"]]
    built_settings = evaluator.built[0][0]
    assert built_settings.agent.max_steps == 3 and built_settings.agent.namespace == "scenario-math"


def test_a_slow_case_times_out_and_the_others_still_run(settings, tmp_path):
    suite = suite_file(tmp_path, MATH.replace("tags: [mul]}", "tags: [mul], timeout_s: 0.3}"))
    run = RunStore(settings.eval_dir).create(EvalOptions(), "scripted", {"math": {"path": "x", "threshold": 0}})
    evaluator = ScriptedEvaluator(settings, REPLIES, delay_s=0.2)
    asyncio.run(evaluator.run(run, [suite], {"math": suite.cases}, repeat=1, concurrency=3))
    by_case = {r["case"]: r for r in run.records()}
    assert by_case["mul"]["status"] == "timeout" and "0.3 s" in by_case["mul"]["error"]
    assert by_case["call"]["status"] == "passed" and by_case["add"]["status"] == "failed"


def test_a_dead_server_is_recorded_as_an_error_not_raised(settings, tmp_path):
    suite = suite_file(tmp_path, MATH)
    down = openai.APIConnectionError(request=httpx.Request("POST", "http://x"))
    evaluator = ScriptedEvaluator(settings, {**REPLIES, "What is 2 + 2?": [down]})
    record = asyncio.run(evaluator.episode(suite, suite.cases[1]))
    assert record["status"] == "error" and not record["passed"]
    assert "model call failed" in record["error"]


def test_resume_runs_only_what_is_missing(settings, tmp_path):
    suite = suite_file(tmp_path, MATH)
    run = RunStore(settings.eval_dir).create(EvalOptions(repeat=2), "scripted", {"math": {"path": "x"}})
    evaluator = ScriptedEvaluator(settings, REPLIES)
    asyncio.run(evaluator.run(run, [suite], {"math": suite.cases[:1]}, repeat=2, concurrency=2))
    assert sorted((r["case"], r["repeat"]) for r in run.records()) == [("mul", 0), ("mul", 1)]
    asyncio.run(evaluator.run(run, [suite], {"math": suite.cases}, repeat=2, concurrency=2))
    done = sorted((r["case"], r["repeat"]) for r in run.records())
    assert done == sorted((c.id, k) for c in suite.cases for k in range(2))  # nothing ran twice


def test_the_episodes_expected_longest_start_first(settings, tmp_path):
    suite = suite_file(tmp_path, MATH)
    run = RunStore(settings.eval_dir).create(EvalOptions(), "scripted", {"math": {"path": "x"}})
    evaluator = ScriptedEvaluator(settings, REPLIES)
    started = []
    episode = evaluator.episode

    async def noted(suite, case, repeat=0):
        started.append(case.id)
        return await episode(suite, case, repeat)

    evaluator.episode = noted
    expected = expected_seconds([{"suite": "math", "case": "add", "latency_s": 9.0},
                                 {"suite": "math", "case": "mul", "latency_s": 1.0}])
    asyncio.run(evaluator.run(run, [suite], {"math": suite.cases}, repeat=1, concurrency=1, expected=expected))
    assert started == ["add", "call", "mul"]  # "call" never ran: its suite's mean, 5 s


def test_expected_seconds_are_the_case_latest_else_the_suite_mean_else_zero():
    expected = expected_seconds([{"suite": "a", "case": "x", "latency_s": 2.0},
                                 {"suite": "a", "case": "y", "latency_s": 4.0},
                                 {"suite": "a", "case": "x", "latency_s": 6.0},
                                 {"suite": "b", "case": "z", "status": "error"}])  # no latency: not counted
    assert expected("a", "x") == 6.0 and expected("a", "new") == 4.0 and expected("b", "z") == 0.0


def test_outcome_keeps_the_answer_apart_from_citations_and_lists_calls(settings, tmp_path):
    suite = suite_file(tmp_path, MATH)
    store = TrajectoryStore(settings.trajectories_path)
    evaluator = ScriptedEvaluator(settings, {"What is 12 * 3?": [
        action("calculator", expression="12 * 3"), action("final_answer", answer="36", sources=["0a1b2c3d"])]},
        store=store)
    record = asyncio.run(evaluator.episode(suite, suite.cases[0]))
    outcome = outcome_of(store.get(record["trajectory"]))
    assert outcome.answer == "36" and outcome.sources == []  # sources come from passages found (none), not the model
    assert outcome.calls == [("calculator", {"expression": "12 * 3"})]

"""Nothing the gate or the test split measures leaks into training, exemplars or the user's memory; a round whose
rollouts all failed stops with the cause. No model is involved."""

import json
from pathlib import Path

from strop.config import load_settings
from strop.feedback import FeedbackLog
from strop.memory.core import IngestReport
from strop.memory.ingest import Document, chunk_document
from strop.scenarios.runner import Evaluator, namespace
from strop.scenarios.runs import EvalOptions, RunStore
from strop.scenarios.suite import Case, Suite, SuiteSpec, load_suite
from strop.serving.endpoint import Endpoint
from strop.tools.toolkit import LazyMemory
from strop.training import loop
from strop.training.exemplars import Evidence, why_not
from strop.training.loop import Improver, Round
from strop.training.pairs import human_pair
from strop.training.sources import Prompt
from strop.trajectories import Trajectory

ENDPOINT = Endpoint("http://x/v1", "m", "k", managed=False)
RIGHT = json.dumps({"tool": "final_answer", "args": {"answer": "yes"}})
WRONG = json.dumps({"tool": "final_answer", "args": {"answer": "no"}})


def improver(tmp_path, suites=()) -> Improver:
    settings = load_settings(state_dir=tmp_path).model_copy(deep=True)
    settings.improve.suites = list(suites) or settings.improve.suites
    return Improver(settings, ENDPOINT)


def suite_file(tmp_path):
    rows = [f"  - {{id: c{i}, input: 'What is {i} + 1?', expect: {{numeric: {i + 1}}}}}" for i in range(200)]
    path = tmp_path / "sums.yaml"
    path.write_text("name: sums\ntrain_fraction: 0.5\ntest_fraction: 0.2\ncases:\n" + "\n".join(rows) + "\n")
    return path


def new_round(imp: Improver, number: int) -> Round:
    folder = imp.settings.improve_dir / f"round-{number:04d}"
    folder.mkdir(parents=True)
    return Round(folder)


def test_human_pairs_skip_evaluation_questions_count_once_and_serve_one_round(tmp_path):
    path = suite_file(tmp_path)
    imp = improver(tmp_path, [str(path)])
    held = next(c for c in load_suite(path).cases if c.split == "test")
    gate = next(c for c in load_suite(path).cases if c.split == "gate")
    log = FeedbackLog(imp.settings.feedback_dir)
    fresh = human_pair([{"role": "user", "content": "Is the sky blue?"}], RIGHT, WRONG)
    for pair in (fresh, fresh, human_pair([{"role": "user", "content": held.input}], RIGHT, WRONG),
                 human_pair([{"role": "user", "content": gate.input.upper() + " "}], RIGHT, WRONG)):
        log.add_pair(pair)
    first = new_round(imp, 1)
    assert [p["id"] for p in imp.human_pairs(first)] == [fresh["id"]]  # deduplicated, evaluation questions out
    assert [p["id"] for p in imp.human_pairs(first)] == [fresh["id"]]  # the same round, resumed: the same
    assert imp.human_pairs(new_round(imp, 2)) == []  # used by round 1: never again


def test_exemplars_never_come_from_gate_or_test_evaluations(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    store = RunStore(settings.eval_dir)
    runs = {}
    for split in ("gate", "test", "train"):
        run = store.create(EvalOptions(split=split), "m", {"math": {}})
        run.append({"suite": "math", "case": "c", "repeat": 0, "split": split, "status": "passed", "passed": True,
                    "trajectory": f"t-{split}"})
        runs[split] = run
    evidence = Evidence.gather(settings)
    assert evidence.passed == {"t-train"} and evidence.held_out == {"t-gate", "t-test"}
    answered = Trajectory(prompt="q", messages=[{"role": "user", "content": "q"}], status="answered", id="t-gate")
    assert why_not(answered, evidence, "clean") == "a gate or test evaluation"


class Memory:
    """Stands in for the embedded memory: records the namespaces chunks are stored in."""

    def __init__(self):
        self.namespaces = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def chunker(self):
        return lambda text: [text]

    def store_chunks(self, chunks, report):
        self.namespaces += [c.payload["namespace"] for c in chunks]
        report.added += len(chunks)


def test_remember_during_an_evaluation_writes_to_a_scratch_namespace(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    memory = Memory()
    suite = Suite("notes", Path("."), SuiteSpec(name="notes"))
    evaluator = Evaluator(settings, ENDPOINT, memory=memory)
    case = Case("notes", "c", "q", graders=[])
    remember = next(t for t in evaluator.tools_for(evaluator.settings_for(suite), suite, case) if t.name == "remember")
    remember("The door code is 4711.")
    [written] = memory.namespaces
    assert written.startswith("scratch-")
    assert written not in (namespace(suite), settings.agent.namespace)
    assert Evaluator(settings, ENDPOINT, memory=memory).scratch != evaluator.scratch  # one per run


def test_an_evaluation_leaves_the_memory_as_it_found_it(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    memory = LazyMemory(settings)  # the real embedded memory
    suite = Suite("notes", Path("."), SuiteSpec(name="notes"))
    case = Case("notes", "c", "q", graders=[])
    try:
        with memory as mem:
            note = Document("The lead is Ada.", "note", "note", "n1")
            mem.store_chunks(chunk_document(note, "default", mem.chunker()), IngestReport())
        with Evaluator(settings, ENDPOINT, memory=memory) as evaluator:
            tools = evaluator.tools_for(evaluator.settings_for(suite), suite, case)
            next(t for t in tools if t.name == "remember")("The door code is 4711.")
            with memory as mem:
                assert mem.stats()["namespaces"] == {"default": 1, evaluator.scratch: 1}
        with memory as mem:
            assert mem.stats()["namespaces"] == {"default": 1}  # the user's note stays, the scratch one is gone
    finally:
        memory.close()


def test_a_round_whose_rollouts_all_failed_stops_with_the_cause(tmp_path, monkeypatch):
    class Failing:  # stands in for the agent: the server refuses every request
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        async def episode(self, suite, case, k):
            return {"suite": suite.name, "case": case.id, "status": "error", "passed": False, "grades": [],
                    "trajectory": None, "error": "APIConnectionError: Connection refused"}

    monkeypatch.setattr(loop, "Evaluator", Failing)
    imp = improver(tmp_path)
    rnd = new_round(imp, 1)
    prompts = [Prompt(f"p{i}", "chat", f"question {i}?") for i in range(3)]
    (rnd.dir / "prompts.jsonl").write_text("".join(json.dumps(p.__dict__) + "\n" for p in prompts))
    result = imp.rollouts(rnd)
    assert "every rollout failed" in result["stop"] and "Connection refused" in result["stop"]
    assert imp.prompts(rnd) == prompts  # no train cases drawn on top: they would fail alike
